"""One defect event in, one report out: the explainer's logic, without Kafka.

The path of an event (``Explainer.explain``), one call into one module per step:

    defect event -> facts (facts.py) -> prompt (prompt.py) -> VLM answer (vlm.py)
                 -> report (report.py) -> store (store.py) and publish (``handle``'s ``publish``)

First of all, the store is asked whether the event was already reported (idempotency: no second
call, no second report). Before the prompt, the cheap checks that can stop a call: an endpoint, an
egress policy that lets something out, decodable pictures, budget. Anything that stops the call
either holds the event (the service keeps it uncommitted and retries it later) or produces a marked
fallback report, as configured. Nothing is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from opentelemetry import trace

from services.explainer import metrics
from services.explainer.controls import CircuitBreaker, DailyBudget, RateLimiter
from services.explainer.document import ReportDocument
from services.explainer.facts import EventFacts, read_facts
from services.explainer.policy import ReferenceLibrary, egress_for, vocabulary_for
from services.explainer.prompt import build_prompt
from services.explainer.report import build_fallback_report, build_vlm_report
from services.explainer.store import ReportStore, StoredReport
from services.explainer.vlm import VlmClient, VlmExchange, VlmFailure, make_openai_client
from shared.frames_store import FrameImage
from shared.messages.schemas import TEXT_MAX, DefectEvent, FindingMsg, Report, frame_keys
from shared.settings import EgressPolicy, ExplainerSettings, UnavailablePolicy
from shared.telemetry.logging import log_event
from shared.telemetry.tracing import (
    ConsumedMessage,
    extract_context,
    get_tracer,
    inject_headers,
    set_consumed_attributes,
)

log = logging.getLogger("lineguard.explainer")
Publish = Callable[[Report, list[tuple[str, bytes]]], Awaitable[None]]
# Is this report's message already on the topic? Asked only for a stored report without its
# publication marker (a crash, or a failed send, between publishing and marking).
OnTopic = Callable[[ReportDocument], Awaitable[bool]]
tracer = get_tracer("lineguard.explainer")


@dataclass
class EventResult:
    """What became of one defect event: ``reported`` (a new report), ``duplicate`` (its report was
    already in the store) or ``held`` (no report yet; the service retries it after
    ``retry_after_s``)."""

    kind: Literal["reported", "duplicate", "held"]
    document: ReportDocument | None = None
    json_path: Path | None = None
    published: bool = False  # whether the Report message went out (for duplicates: earlier)
    hold_reason: str = ""
    retry_after_s: float = 0.0
    headers: list[tuple[str, bytes]] = field(default_factory=list)  # trace context for the Report


@dataclass(frozen=True)
class _Answer:
    """The VLM exchange (None without a call) and, when its answer cannot stand, why."""

    exchange: VlmExchange | None
    fallback_reason: str = ""


def _clip(text: str, limit: int = TEXT_MAX) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def summary_with_quote(doc: ReportDocument) -> str:
    """The report's own summary, then the VLM's assessment quoted as its words."""
    if not doc.vlm_assessment:
        return doc.summary
    return f"{doc.summary} VLM ({doc.vlm_model}), quoted: \u201c{doc.vlm_assessment}\u201d"


def report_message(doc: ReportDocument, report_path: str) -> Report:
    """The compact ``Report`` message for the topic (long texts clipped; the files have them whole)."""
    return Report(
        **frame_keys(doc),
        product_class=doc.product_class,
        decision=doc.decision,
        score=doc.score,
        source=doc.source,
        fallback_reason=_clip(doc.fallback_reason),
        vlm_model=_clip(doc.vlm_model, 256),
        language=doc.language,
        grade=doc.grade,
        anomalous=doc.anomalous,
        confidence=doc.confidence,
        summary=_clip(summary_with_quote(doc)),
        findings=[
            FindingMsg(
                defect_type=_clip(f.defect_type, 256) or "anomaly",
                location=f.location,
                severity=f.severity,
                description=_clip(f.description),
                possible_cause=_clip(f.possible_cause),
                location_agrees=f.location_agrees,
            )
            for f in doc.findings[:32]
        ],
        recommended_actions=[_clip(a) for a in doc.recommended_actions[:32]],
        location_disagreement=doc.location_disagreement,
        vlm_disagrees=doc.vlm_disagrees,
        report_path=report_path,
        prompt_tokens=doc.prompt_tokens,
        completion_tokens=doc.completion_tokens,
        cost_usd=doc.cost_usd,
        captured_at=doc.captured_at,
        created_at=doc.created_at,
    )


class Explainer:
    def __init__(
        self,
        settings: ExplainerSettings,
        store: ReportStore,
        *,
        vlm: VlmClient | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.vlm = vlm
        self.clock = clock
        self.references = ReferenceLibrary(settings.references_dir, settings.references_per_class)
        self._calls = asyncio.Semaphore(settings.max_concurrency)
        self._per_frame: dict[tuple[str, str, str, int], list[Any]] = {}  # [lock, users]
        self.stopping = False  # set on shutdown: events still waiting for a call are held

    async def aclose(self) -> None:
        if self.vlm is not None:
            await self.vlm.client.close()

    async def handle(
        self,
        event: DefectEvent,
        *,
        headers: Sequence[tuple[str, bytes]] | None = None,
        first_seen: float | None = None,
        publish: Publish | None = None,
        fallback_reason: str = "",
        on_topic: OnTopic | None = None,
        image: FrameImage | None = None,
        consumed: ConsumedMessage | None = None,
    ) -> EventResult:
        """Report on ``event``, or say it is a duplicate, or that it must be held.

        ``image``: the frame's bytes when the service has fetched a claim-checked frame (verified,
        ``shared.frames_store.image_of``); None: the bytes the event carries.
        ``first_seen``: when the service first received it; the event ends in a report no later
        than ``max_hold_s`` after it. ``fallback_reason``: write the fallback report without
        asking the VLM (the service's last resort for an event held past that limit).
        ``publish``: sends the ``Report`` message; called for a new report, and for a stored one
        whose message never went out (a crash in between), then recorded in the store.
        ``on_topic``: for a stored report without its marker, whether its message did go out
        before the crash; then it is only marked, so the topic gets it exactly once.
        Events for the same frame are handled one at a time, so a duplicate arriving while the
        original is in flight waits for it and then finds its report.
        ``headers``: the record's; its trace context is the parent of this event's span (the frame's
        trace continues). ``consumed``: where the record was, for that span's attributes.
        """
        v = event.verdict
        key = (v.frame_id, v.line_id, v.station_id, v.captured_at)
        entry = self._per_frame.setdefault(key, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                return await self._traced(
                    event, headers, first_seen, publish, fallback_reason, on_topic, image, consumed
                )
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._per_frame[key]

    async def _traced(
        self,
        event: DefectEvent,
        headers: Sequence[tuple[str, bytes]] | None,
        first_seen: float | None,
        publish: Publish | None,
        fallback_reason: str,
        on_topic: OnTopic | None,
        image: FrameImage | None,
        consumed: ConsumedMessage | None,
    ) -> EventResult:
        with tracer.start_as_current_span(
            "explainer.report", context=extract_context(headers), kind=trace.SpanKind.CONSUMER
        ) as span:
            if consumed is not None:
                set_consumed_attributes(span, consumed)
            span.set_attribute("lineguard.frame_id", event.verdict.frame_id)
            seen = first_seen if first_seen is not None else self.clock()
            result = await self.explain(event, seen, fallback_reason, image)
            span.set_attribute("lineguard.outcome", result.kind)
            result.headers = inject_headers([])
            document, json_path = result.document, result.json_path
            if document is not None:
                span.set_attribute("lineguard.report.source", document.source)
                span.set_attribute("lineguard.report.grade", document.grade)
            if (
                publish is not None
                and document is not None
                and json_path is not None
                and not result.published
            ):
                if result.kind == "duplicate" and on_topic is not None and await on_topic(document):
                    metrics.REPUBLISH_AVOIDED.inc()
                    log_event(log, "report_found_on_topic", frame_id=document.frame_id)
                else:
                    await publish(report_message(document, self.store.relative(json_path)), result.headers)
                self.store.mark_published(document)
                result.published = True
            return result

    async def explain(
        self,
        event: DefectEvent,
        first_seen: float,
        fallback_reason: str = "",
        image: FrameImage | None = None,
    ) -> EventResult:
        """The path of one event, step by step (publishing is ``handle``'s last step)."""
        v = event.verdict
        stored = self.store.lookup(v.frame_id, v.line_id, v.station_id, v.captured_at)
        if stored is not None:
            return self._duplicate(stored)
        facts = read_facts(
            event,
            image,
            frame_max_side=self.settings.frame_max_side,
            crop_max_side=self.settings.crop_max_side,
        )
        egress = egress_for(self.settings, v)
        answer = (
            _Answer(None, fallback_reason) if fallback_reason else await self._ask(facts, egress, first_seen)
        )
        if isinstance(answer, EventResult):  # held: no report yet
            return answer
        document = self._report(facts, answer, egress)
        json_path = self.store.write(document, facts.pictures)
        self._count(document, json_path)
        return EventResult("reported", document, json_path)

    def _duplicate(self, stored: StoredReport) -> EventResult:
        metrics.DUPLICATES.inc()
        log_event(log, "duplicate_event", frame_id=stored.document.frame_id, published=stored.published)
        return EventResult("duplicate", stored.document, stored.json_path, stored.published)

    async def _ask(self, facts: EventFacts, egress: EgressPolicy, first_seen: float) -> _Answer | EventResult:
        """The prompt, then the VLM's answer. Without a call the answer is the fallback reason;
        an ``EventResult`` when the policy holds the event instead."""
        v = facts.verdict
        left_s = first_seen + self.settings.max_hold_s - self.clock()  # until the report is due
        may_hold = left_s > 0
        if self.vlm is None:
            return _Answer(None, "no_endpoint")
        if egress is EgressPolicy.NONE:
            return _Answer(None, "egress_none")
        if facts.pictures is None:
            return _Answer(None, f"image_{facts.image_problem}")
        if not self.vlm.can_afford_a_call():
            metrics.BUDGET_REMAINING.set(self.vlm.budget.remaining())
            if self.settings.when_budget_spent is UnavailablePolicy.HOLD and may_hold:
                retry = min(self.settings.hold_retry_s, self.vlm.budget.seconds_until_reset(), left_s)
                return self._held(v.frame_id, "budget_spent", retry)
            return _Answer(None, "budget_spent")
        if not may_hold:  # held until the limit: the report is due now
            return _Answer(None, "hold_limit")
        prompt = build_prompt(
            facts,
            facts.pictures,
            egress=egress,
            vocabulary=vocabulary_for(self.settings, v.product_class),
            language=self.settings.language,
            references=self.references.for_class(v.product_class) if egress is EgressPolicy.FULL else [],
        )
        exchange = VlmExchange()
        try:
            # The whole exchange (retries, repair, follow-up) ends by the hold limit, whatever
            # the endpoint does; a cancelled call settles its breaker permit on the way out.
            async with asyncio.timeout(left_s):
                async with self._calls:
                    if self.stopping:  # shutting down: do not start a paid call now
                        return self._held(v.frame_id, "shutdown", self.settings.hold_retry_s)
                    return _Answer(await self.vlm.explain(prompt, exchange))
        except TimeoutError:
            log_event(log, "vlm_past_hold_limit", logging.WARNING, frame_id=v.frame_id)
            if exchange.answer is not None:  # cut short in the follow-up: the first answer stands
                return _Answer(exchange)
            return _Answer(exchange, "hold_limit")
        except VlmFailure as failure:
            log_event(
                log,
                "vlm_failed",
                logging.WARNING,
                frame_id=v.frame_id,
                kind=failure.kind,
                detail=failure.detail,
            )
            if failure.later and self.settings.when_endpoint_down is UnavailablePolicy.HOLD and may_hold:
                retry = max(self.settings.hold_retry_s, self.vlm.breaker.retry_after())
                return self._held(v.frame_id, "endpoint_down", min(retry, left_s))
            return _Answer(failure.exchange, "endpoint_down" if failure.later else f"vlm_{failure.kind}")

    def _held(self, frame_id: str, reason: str, retry_after_s: float) -> EventResult:
        log_event(log, "event_held", frame_id=frame_id, reason=reason, retry_after_s=round(retry_after_s, 1))
        return EventResult("held", hold_reason=reason, retry_after_s=retry_after_s)

    def _report(self, facts: EventFacts, answer: _Answer, egress: EgressPolicy) -> ReportDocument:
        """The VLM's report when its answer stands, else the fallback; either way with what was spent."""
        created = time.time_ns()
        language = self.settings.language
        exchange = answer.exchange
        if exchange is not None and exchange.answer is not None and not answer.fallback_reason:
            document = build_vlm_report(
                facts,
                exchange.answer,
                facts.heat_shares,
                language=language,
                vlm_model=self.settings.model,
                created_at=created,
                egress=egress.value,
                class_actions=self.settings.class_actions.get(facts.verdict.product_class, []),
                severity_bands=self.settings.severity_bands,
            )
        else:
            document = build_fallback_report(
                facts,
                reason=answer.fallback_reason or "no_answer",
                vocabulary=vocabulary_for(self.settings, facts.verdict.product_class),
                severity_bands=self.settings.severity_bands,
                language=language,
                created_at=created,
                egress=egress.value,
                class_actions=self.settings.class_actions.get(facts.verdict.product_class, []),
            )
        if exchange is not None:  # what was spent, even when it ended in a fallback
            document.prompt_tokens = exchange.usage.prompt_tokens
            document.completion_tokens = exchange.usage.completion_tokens
            document.cost_usd = exchange.cost_usd
            document.vlm_calls = exchange.calls
            document.repaired = exchange.repaired
            document.follow_up = exchange.follow_up
        return document

    def _count(self, document: ReportDocument, json_path: Path) -> None:
        metrics.REPORTS.labels(document.source).inc()
        if document.source == "fallback":
            metrics.FALLBACKS.labels(metrics.code_label(document.fallback_reason)).inc()
        if document.location_disagreement:
            metrics.LOCATION_DISAGREEMENTS.inc()
        if document.vlm_disagrees:
            metrics.VLM_DISAGREEMENTS.inc()
            log_event(
                log,
                "vlm_disagrees",
                logging.WARNING,
                frame_id=document.frame_id,
                decision=document.decision.value,
                score=round(document.score, 4),
            )
        metrics.REPORT_SECONDS.observe(max(0.0, (document.created_at - document.decided_at) / 1e9))
        log_event(log, "report_written", **document.log_fields(), path=self.store.relative(json_path))


def build_explainer(settings: ExplainerSettings) -> Explainer:
    """The explainer as configured: store, budget (persisted in the store), breaker, rate limit and
    the VLM client (None when no endpoint is configured)."""
    store = ReportStore(settings.report_dir)
    client = make_openai_client(settings)
    vlm = None
    if client is not None:
        budget = DailyBudget(
            settings.daily_budget_usd,
            settings.prices,
            settings.default_price,
            max_output_tokens=settings.max_output_tokens,
            state_dir=store.state_dir(),
        )
        metrics.BUDGET_REMAINING.set(budget.remaining())
        vlm = VlmClient(
            client,
            settings,
            budget=budget,
            breaker=CircuitBreaker(
                settings.breaker_failures,
                settings.breaker_reset_s,
                trial_timeout_s=2 * settings.request_timeout_s + 5,  # a trial outlives no request
            ),
            limiter=RateLimiter(settings.requests_per_minute, burst=settings.max_concurrency),
        )
    return Explainer(settings, store, vlm=vlm)
