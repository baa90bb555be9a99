"""One defect event in, one report out: the explainer's logic, without Kafka.

Order of checks, cheapest first: already reported (idempotency: no second call, no second report)?
then decodable pictures, an endpoint, an egress policy that lets something out, budget; only then
a VLM call. Anything that stops the call either holds the event (the service keeps it uncommitted
and retries it later) or produces a marked fallback report, as configured. Nothing is dropped.
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
from services.explainer.breaker import CircuitBreaker
from services.explainer.budget import DailyBudget
from services.explainer.geometry import cell_shares
from services.explainer.imaging import (
    EventPictures,
    decode_anomaly_map,
    decode_frame,
    make_pictures,
    resize_map,
)
from services.explainer.policy import ReferenceLibrary, egress_for, vocabulary_for
from services.explainer.prompt import Message, build_messages
from services.explainer.ratelimit import RateLimiter
from services.explainer.render import render_html, render_json, render_markdown
from services.explainer.report import (
    EventFacts,
    ReportDocument,
    build_fallback_report,
    build_vlm_report,
    region_facts,
)
from services.explainer.store import ReportStore
from services.explainer.vlm import VlmClient, VlmExchange, VlmFailure, make_openai_client
from shared.engine.images import ImageError
from shared.messages.schemas import TEXT_MAX, DefectEvent, FindingMsg, Report
from shared.settings import EgressPolicy, ExplainerSettings, UnavailablePolicy
from shared.telemetry.logging import log_event
from shared.telemetry.tracing import extract_context, get_tracer, inject_headers

log = logging.getLogger("lineguard.explainer")
Publish = Callable[[Report, list[tuple[str, bytes]]], Awaitable[None]]
tracer = get_tracer("lineguard.explainer")


@dataclass
class Outcome:
    kind: Literal["reported", "duplicate", "held"]
    document: ReportDocument | None = None
    json_path: Path | None = None
    published: bool = False  # duplicates: whether the Report message already went out
    hold_reason: str = ""
    retry_after_s: float = 0.0
    headers: list[tuple[str, bytes]] = field(default_factory=list)  # trace context for the Report


def event_facts(event: DefectEvent) -> EventFacts:
    v = event.verdict
    regions = [(r.x, r.y, r.width, r.height, r.score, r.area_fraction) for r in v.regions]
    return EventFacts(
        frame_id=v.frame_id,
        line_id=v.line_id,
        station_id=v.station_id,
        camera_id=v.camera_id,
        product_class=v.product_class,
        decision=v.decision,
        score=v.score,
        raw_score=v.raw_score,
        threshold=v.threshold,
        route_confidence=v.route_confidence,
        model_version=v.model_version,
        captured_at=v.captured_at,
        decided_at=v.decided_at,
        image_width=event.width,
        image_height=event.height,
        regions=region_facts(regions, event.width, event.height),
    )


def _clip(text: str, limit: int = TEXT_MAX) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def report_message(doc: ReportDocument, report_path: str) -> Report:
    """The compact ``Report`` message for the topic (long texts clipped; the files have them whole)."""
    return Report(
        frame_id=doc.frame_id,
        line_id=doc.line_id,
        station_id=doc.station_id,
        camera_id=doc.camera_id,
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
        summary=_clip(doc.summary),
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
    ) -> Outcome:
        """Report on ``event``, or say it is a duplicate, or that it must be held.

        ``first_seen``: when the service first received it (for the maximum hold time).
        ``publish``: sends the ``Report`` message; called for a new report, and for a stored one
        whose message never went out (a crash in between), then recorded in the store.
        Events for the same frame are handled one at a time, so a duplicate arriving while the
        original is in flight waits for it and then finds its report.
        """
        v = event.verdict
        key = (v.frame_id, v.line_id, v.station_id, v.captured_at)
        entry = self._per_frame.setdefault(key, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                return await self._traced(event, headers, first_seen, publish)
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
    ) -> Outcome:
        with tracer.start_as_current_span(
            "explainer.report", context=extract_context(headers), kind=trace.SpanKind.CONSUMER
        ) as span:
            span.set_attribute("lineguard.frame_id", event.verdict.frame_id)
            outcome = await self._handle(event, first_seen if first_seen is not None else self.clock())
            span.set_attribute("lineguard.outcome", outcome.kind)
            outcome.headers = inject_headers([])
            document, json_path = outcome.document, outcome.json_path
            if document is not None:
                span.set_attribute("lineguard.report.source", document.source)
                span.set_attribute("lineguard.report.grade", document.grade)
            if (
                publish is not None
                and document is not None
                and json_path is not None
                and not outcome.published
            ):
                await publish(report_message(document, self.store.relative(json_path)), outcome.headers)
                self.store.mark_published(document)
                outcome.published = True
            return outcome

    async def _handle(self, event: DefectEvent, first_seen: float) -> Outcome:
        v = event.verdict
        stored = self.store.lookup(v.frame_id, v.line_id, v.station_id, v.captured_at)
        if stored is not None:
            metrics.DUPLICATES.inc()
            log_event(log, "duplicate_event", frame_id=v.frame_id, published=stored.published)
            return Outcome("duplicate", stored.document, stored.json_path, stored.published)

        facts = event_facts(event)
        pictures, shares, image_problem = self._pictures(event, facts)
        egress = egress_for(self.settings, facts.product_class)
        exchange: VlmExchange | None = None
        reason = ""
        waited = self.clock() - first_seen
        may_hold = waited < self.settings.max_hold_s
        if self.vlm is None:
            reason = "no_endpoint"
        elif egress is EgressPolicy.NONE:
            reason = "egress_none"
        elif pictures is None:
            reason = f"image_{image_problem}"
        elif not self.vlm.budget.can_spend(self.vlm.budget.estimate(self.vlm.model)):
            metrics.BUDGET_REMAINING.set(self.vlm.budget.remaining())
            if self.settings.when_budget_spent is UnavailablePolicy.HOLD and may_hold:
                retry = min(self.settings.hold_retry_s, self.vlm.budget.seconds_until_reset())
                return self._held(facts, "budget_spent", retry)
            reason = "budget_spent"
        else:
            vlm = self.vlm
            vocabulary = vocabulary_for(self.settings, facts.product_class)
            references = self.references.for_class(facts.product_class) if egress is EgressPolicy.FULL else []
            shown = pictures

            def build(structured: bool) -> list[Message]:
                return build_messages(
                    facts,
                    shown,
                    egress=egress,
                    vocabulary=vocabulary,
                    language=self.settings.language,
                    structured=structured,
                    references=references,
                )

            top_position = facts.regions[0].position if facts.regions else ""
            try:
                async with self._calls:
                    if self.stopping:  # shutting down: do not start a paid call now
                        return self._held(facts, "shutdown", self.settings.hold_retry_s)
                    exchange = await vlm.explain(build, top_position=top_position)
            except VlmFailure as failure:
                log_event(
                    log,
                    "vlm_failed",
                    logging.WARNING,
                    frame_id=facts.frame_id,
                    kind=failure.kind,
                    detail=failure.detail,
                )
                if failure.later and self.settings.when_endpoint_down is UnavailablePolicy.HOLD and may_hold:
                    retry = max(self.settings.hold_retry_s, vlm.breaker.retry_after())
                    return self._held(facts, "endpoint_down", retry)
                exchange = failure.exchange
                reason = "endpoint_down" if failure.later else f"vlm_{failure.kind}"
        document = self._document(facts, exchange, shares, reason, egress)
        json_path = self._write(document, pictures)
        return Outcome("reported", document, json_path)

    def _pictures(
        self, event: DefectEvent, facts: EventFacts
    ) -> tuple[EventPictures | None, dict[str, float] | None, str]:
        try:
            frame = decode_frame(event.image, event.encoding, event.width, event.height)
            anomaly_map = decode_anomaly_map(event.anomaly_map_png)
        except ImageError as exc:
            log_event(
                log, "event_image_unusable", logging.WARNING, frame_id=facts.frame_id, reason=exc.reason
            )
            return None, None, exc.reason
        h, w = frame.shape[:2]
        top = facts.regions[0] if facts.regions else None
        pictures = make_pictures(
            frame,
            anomaly_map,
            (top.x, top.y, top.width, top.height) if top else None,
            frame_max_side=self.settings.frame_max_side,
            crop_max_side=self.settings.crop_max_side,
        )
        return pictures, cell_shares(resize_map(anomaly_map, w, h)), ""

    def _held(self, facts: EventFacts, reason: str, retry_after_s: float) -> Outcome:
        log_event(
            log, "event_held", frame_id=facts.frame_id, reason=reason, retry_after_s=round(retry_after_s, 1)
        )
        return Outcome("held", hold_reason=reason, retry_after_s=retry_after_s)

    def _document(
        self,
        facts: EventFacts,
        exchange: VlmExchange | None,
        shares: dict[str, float] | None,
        reason: str,
        egress: EgressPolicy,
    ) -> ReportDocument:
        created = time.time_ns()
        language = self.settings.language
        if exchange is not None and exchange.answer is not None and not reason:
            document = build_vlm_report(
                facts,
                exchange.answer,
                shares,
                language=language,
                vlm_model=self.settings.model,
                created_at=created,
                egress=egress.value,
            )
        else:
            document = build_fallback_report(
                facts,
                reason=reason or "no_answer",
                vocabulary=vocabulary_for(self.settings, facts.product_class),
                severity_bands=self.settings.severity_bands,
                language=language,
                created_at=created,
                egress=egress.value,
            )
        if exchange is not None:  # what was spent, even when it ended in a fallback
            document.prompt_tokens = exchange.usage.prompt_tokens
            document.completion_tokens = exchange.usage.completion_tokens
            document.cost_usd = exchange.cost_usd
            document.vlm_calls = exchange.calls
            document.repaired = exchange.repaired
            document.follow_up = exchange.follow_up
        return document

    def _write(self, document: ReportDocument, pictures: EventPictures | None) -> Path:
        json_path = self.store.write(
            document,
            json_text=render_json(document),
            markdown=render_markdown(document),
            html=render_html(document, pictures),
        )
        metrics.REPORTS.labels(document.source).inc()
        if document.source == "fallback":
            metrics.FALLBACKS.labels(document.fallback_reason).inc()
        if document.location_disagreement:
            metrics.LOCATION_DISAGREEMENTS.inc()
        metrics.REPORT_SECONDS.observe(max(0.0, (document.created_at - document.decided_at) / 1e9))
        log_event(
            log,
            "report_written",
            frame_id=document.frame_id,
            source=document.source,
            grade=document.grade,
            fallback_reason=document.fallback_reason,
            cost_usd=round(document.cost_usd, 6),
            path=self.store.relative(json_path),
        )
        return json_path


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
            breaker=CircuitBreaker(settings.breaker_failures, settings.breaker_reset_s),
            limiter=RateLimiter(settings.requests_per_minute, burst=settings.max_concurrency),
        )
    return Explainer(settings, store, vlm=vlm)
