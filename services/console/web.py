"""The console's pages (Starlette, server-rendered with Jinja2; a little vanilla JavaScript).

Routes: ``/`` the line (live through server-sent events at ``/events``), ``/frame?id=`` one frame
with its pictures, regions, report and the feedback form, ``/frame/feedback?id=`` (POST) a judgement,
``/login`` and ``/logout``, ``/report?id=`` the explainer's HTML report from the store, ``/healthz``.

Everything but ``/login``, ``/healthz`` and ``/static`` needs an operator unless pages are public;
every POST needs an operator (or, for ``/login``, the token), a CSRF token bound to the session and
a same-origin ``Origin`` when the browser sends one. Request bodies are read to at most
``MAX_FORM_BYTES``. Pages carry a strict Content-Security-Policy (no inline script or style).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.console import metrics
from services.console.auth import SESSION_COOKIE, Authenticator, Operator, SignInLimiter
from services.console.core import (
    ConsoleState,
    FeedbackForm,
    FeedbackRefused,
    build_feedback,
    clean_operator_name,
    defect_types,
    feedback_summary,
)
from services.console.pictures import KINDS, PictureCache, PictureKey, render
from shared.errors import ImageError
from shared.frames_store import ClaimStore
from shared.limits import MAX_PIXELS
from shared.messages.schemas import Feedback
from shared.telemetry.logging import log_event

log = logging.getLogger("lineguard.console")
HERE = Path(__file__).resolve().parent
MAX_FORM_BYTES = 64 << 10
MAX_FORM_FIELDS = 64
MAX_LIVE_CLIENTS = 100
KEEPALIVE_S = 15.0
GALLERY = 24

CSP = (
    "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; object-src 'none'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
# The explainer's report files embed their pictures and styles; they run no script and load nothing.
REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; sandbox; frame-ancestors 'none'"

Publisher = Callable[[Feedback], Awaitable[None]]


@dataclass
class ConsoleContext:
    """What the pages need: the state, who may write, where feedback goes, and the settings read."""

    state: ConsoleState
    auth: Authenticator
    publish: Publisher
    vocabulary: dict[str, list[str]]
    default_vocabulary: list[str]
    report_dir: Path | None
    public_read: bool = False
    secure_cookies: bool = False
    max_image_pixels: int = MAX_PIXELS
    claims: ClaimStore | None = None  # where claim-checked frames are fetched from
    max_report_bytes: int = 16 << 20
    sign_ins_per_minute: int = 10
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()


class SecurityHeaders:
    """Adds the same protective headers to every response (a CSP of its own is kept)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                extra = {
                    b"content-security-policy": CSP.encode(),
                    b"x-content-type-options": b"nosniff",
                    b"referrer-policy": b"same-origin",
                    b"x-frame-options": b"DENY",
                    b"cache-control": b"no-store",
                }
                headers += [(k, v) for k, v in extra.items() if k not in names]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["q"] = lambda value: quote(str(value), safe="")
    env.filters["clock"] = lambda ns: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(int(ns) / 1e9))
    return env


def build_app(ctx: ConsoleContext) -> ASGIApp:
    env = _environment()
    pictures = PictureCache()
    limiter = SignInLimiter(ctx.sign_ins_per_minute)
    live_clients = 0

    def page(
        name: str, request: Request, operator: Operator | None, status: int = 200, **values: Any
    ) -> Response:
        csrf = ctx.auth.csrf_token(operator) if operator else ""
        html = env.get_template(name).render(
            operator=operator, csrf=csrf, can_sign_in=ctx.auth.token_sign_in, path=request.url.path, **values
        )
        return HTMLResponse(html, status_code=status)

    def message(request: Request, operator: Operator | None, status: int, title: str, text: str) -> Response:
        return page("message.html", request, operator, status, title=title, text=text)

    def who(request: Request) -> Operator | None:
        client = request.client.host if request.client else None
        proxied = ctx.auth.proxy_operator(dict(request.headers), client)
        if proxied is not None:
            return proxied
        return ctx.auth.session_operator(request.cookies.get(SESSION_COOKIE))

    def reader(request: Request) -> tuple[Operator | None, Response | None]:
        """The operator, or the redirect to sign in when pages are not public."""
        operator = who(request)
        if operator is None and not ctx.public_read:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return None, RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        return operator, None

    def same_origin(request: Request) -> bool:
        origin = request.headers.get("origin")
        if origin is None:
            return True  # not a browser's cross-site form (those always carry Origin for POST)
        return urlsplit(origin).netloc == request.headers.get("host", "")

    async def form_fields(request: Request) -> dict[str, list[str]]:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            raise FeedbackRefused("send the form as application/x-www-form-urlencoded")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                raise FeedbackRefused(f"the form is over {MAX_FORM_BYTES} bytes")
        try:
            return parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
        except (UnicodeDecodeError, ValueError):
            raise FeedbackRefused("the form cannot be read") from None

    def writer_refusal(
        request: Request, operator: Operator | None, fields: dict[str, list[str]]
    ) -> Response | None:
        if operator is None:
            metrics.REFUSED_WRITES.labels("unauthenticated").inc()
            return message(request, None, 401, "Sign in first", "Only a signed-in operator can do this.")
        given = (fields.get("csrf") or [""])[0]
        if not same_origin(request) or not ctx.auth.csrf_matches(operator, given):
            metrics.REFUSED_WRITES.labels("csrf").inc()
            return message(
                request, operator, 403, "Refused", "The form is stale or from another site; reload."
            )
        return None

    async def writer(request: Request) -> tuple[Operator, dict[str, list[str]]] | Response:
        """The signed-in operator and the form they sent, or the response that refuses the write."""
        operator = who(request)
        try:
            fields = await form_fields(request)
        except FeedbackRefused as exc:
            return message(request, operator, 400, "Refused", str(exc))
        refusal = writer_refusal(request, operator, fields)
        if refusal is not None or operator is None:
            return refusal or message(request, None, 401, "Sign in first", "")
        return operator, fields

    # ---- pages ------------------------------------------------------------------------------

    async def index(request: Request) -> Response:
        operator, redirect = reader(request)
        if redirect:
            return redirect
        state = ctx.state
        stations = [(name, [state.row(v) for v in verdicts[:50]]) for name, verdicts in state.stations()]
        gallery = [state.row(e.verdict) for e in state.recent_evidence(GALLERY)]
        models = [state.model_row(a) for a in state.model_history()]
        serving = state.model_row(state.serving_model) if state.serving_model else None
        return page(
            "index.html",
            request,
            operator,
            seq=state.seq,
            stations=stations,
            gallery=gallery,
            counts=state.counts(),
            serving=serving,
            models=models,
        )

    async def frame_page(request: Request) -> Response:
        operator, redirect = reader(request)
        if redirect:
            return redirect
        frame_id = request.query_params.get("id", "")
        verdict = ctx.state.verdict(frame_id)
        if verdict is None:
            return message(request, operator, 404, "Not held", "The console no longer holds this frame.")
        event = ctx.state.evidence(frame_id)
        report = ctx.state.report(frame_id)
        judged = ctx.state.feedback(frame_id)
        return page(
            "frame.html",
            request,
            operator,
            verdict=verdict,
            row=ctx.state.row(verdict),
            event=event,
            report=report,
            report_file=_report_file(ctx, report.report_path) if report else None,
            feedback=feedback_summary(judged) if judged else None,
            types=defect_types(ctx.vocabulary, ctx.default_vocabulary, verdict.product_class),
            saved=request.query_params.get("saved") == "1",
        )

    async def picture(request: Request) -> Response:
        _, redirect = reader(request)
        if redirect:
            return redirect
        frame_id = request.query_params.get("id", "")
        kind = request.query_params.get("kind", "overlay")
        thumb = request.query_params.get("size") == "thumb"
        event = ctx.state.evidence(frame_id)
        if event is None or kind not in KINDS:
            return PlainTextResponse("not held", status_code=404)
        key = PictureKey(frame_id, kind, thumb)
        data = pictures.get(key)
        if data is None:
            try:
                data = await asyncio.to_thread(
                    render, event, kind, thumb=thumb, max_pixels=ctx.max_image_pixels, claims=ctx.claims
                )
            except ImageError as exc:
                metrics.BAD_PICTURES.labels(exc.reason).inc()
                return PlainTextResponse(f"the frame cannot be shown ({exc.reason})", status_code=422)
            pictures.put(key, data)
        return Response(data, media_type="image/jpeg")

    async def report_page(request: Request) -> Response:
        _, redirect = reader(request)
        if redirect:
            return redirect
        report = ctx.state.report(request.query_params.get("id", ""))
        path = _report_file(ctx, report.report_path) if report else None
        if path is None:
            return PlainTextResponse("no report file", status_code=404)
        with open(path, "rb") as handle:
            data = handle.read(ctx.max_report_bytes + 1)
        if len(data) > ctx.max_report_bytes:
            return PlainTextResponse("the report file is too large to show", status_code=413)
        return Response(
            data, media_type="text/html; charset=utf-8", headers={"content-security-policy": REPORT_CSP}
        )

    async def events(request: Request) -> Response:
        nonlocal live_clients
        _, redirect = reader(request)
        if redirect:
            return PlainTextResponse("sign in", status_code=401)
        if live_clients >= MAX_LIVE_CLIENTS:
            return PlainTextResponse("too many live pages", status_code=503)
        since_text = request.query_params.get("since", "")
        since = int(since_text) if since_text.isdigit() else ctx.state.seq

        async def stream() -> AsyncIterator[str]:
            nonlocal live_clients
            live_clients += 1
            metrics.LIVE_CLIENTS.set(live_clients)
            seq = since
            try:
                yield "retry: 2000\n\n"
                while not ctx.stopping.is_set():
                    changes = ctx.state.changes_since(seq)
                    if changes is None:
                        yield f"id: {ctx.state.seq}\nevent: reload\ndata: {{}}\n\n"
                        return
                    for change in changes:
                        data = json.dumps({"kind": change.kind, "data": change.data})
                        yield f"id: {change.seq}\ndata: {data}\n\n"
                        seq = change.seq
                    if not changes:
                        with contextlib.suppress(TimeoutError):
                            async with ctx.changed:
                                await asyncio.wait_for(ctx.changed.wait(), KEEPALIVE_S)
                        if ctx.state.seq == seq:
                            yield ": keep-alive\n\n"
            finally:
                live_clients -= 1
                metrics.LIVE_CLIENTS.set(live_clients)

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"x-accel-buffering": "no"}
        )

    # ---- writing ----------------------------------------------------------------------------

    async def feedback_post(request: Request) -> Response:
        written = await writer(request)
        if isinstance(written, Response):
            return written
        operator, fields = written
        frame_id = request.query_params.get("id", "")
        verdict = ctx.state.verdict(frame_id)
        if verdict is None:
            return message(request, operator, 404, "Not held", "The console no longer holds this frame.")
        event = ctx.state.evidence(frame_id)
        try:
            feedback = build_feedback(
                FeedbackForm.from_fields(fields),
                verdict,
                (event.width, event.height) if event else None,
                defect_types(ctx.vocabulary, ctx.default_vocabulary, verdict.product_class),
                operator=operator.name,
                authenticated_by=operator.authenticated_by,
                submitted_at=time.time_ns(),
            )
        except FeedbackRefused as exc:
            metrics.REFUSED_WRITES.labels("invalid").inc()
            return message(request, operator, 422, "Feedback refused", str(exc))
        try:
            await ctx.publish(feedback)
        except Exception as exc:  # the broker is away: say so, the operator can send again
            log_event(log, "feedback not sent", logging.ERROR, frame_id=frame_id, error=type(exc).__name__)
            return message(request, operator, 503, "Not sent", "The feedback could not be sent; try again.")
        metrics.FEEDBACK.labels(feedback.label).inc()
        log_event(
            log,
            "feedback sent",
            frame_id=frame_id,
            label=feedback.label,
            defect_type=feedback.defect_type,
            regions=len(feedback.regions),
            operator=feedback.operator,
        )
        return RedirectResponse(f"/frame?id={quote(frame_id, safe='')}&saved=1", status_code=303)

    async def login_page(request: Request) -> Response:
        return page("login.html", request, who(request), next=_safe_next(request.query_params.get("next")))

    async def login_post(request: Request) -> Response:
        client = request.client.host if request.client else "?"
        try:
            fields = await form_fields(request)
        except FeedbackRefused as exc:
            return message(request, None, 400, "Refused", str(exc))
        next_page = _safe_next((fields.get("next") or [""])[0])
        if not same_origin(request):
            return message(request, None, 403, "Refused", "The form is from another site.")
        if limiter.blocked(client):
            metrics.SIGN_INS.labels("throttled").inc()
            return message(request, None, 429, "Wait", "Too many failed sign-ins; wait a minute.")
        token = (fields.get("token") or [""])[0]
        try:
            name = clean_operator_name((fields.get("name") or [""])[0])
        except FeedbackRefused as exc:
            return page("login.html", request, None, 400, next=next_page, error=str(exc))
        if not ctx.auth.token_matches(token):
            limiter.failed(client)
            metrics.SIGN_INS.labels("refused").inc()
            log_event(log, "sign-in refused", logging.WARNING, client=client)
            return page("login.html", request, None, 401, next=next_page, error="Wrong token.")
        metrics.SIGN_INS.labels("ok").inc()
        log_event(log, "signed in", operator=name, client=client)
        response = RedirectResponse(next_page, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            ctx.auth.issue_session(name),
            max_age=int(ctx.auth.session_s),
            httponly=True,
            samesite="strict",
            secure=ctx.secure_cookies,
        )
        return response

    async def logout_post(request: Request) -> Response:
        written = await writer(request)
        if isinstance(written, Response):
            return written
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="strict", secure=ctx.secure_cookies)
        return response

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/frame", frame_page),
            Route("/frame/picture", picture),
            Route("/frame/feedback", feedback_post, methods=["POST"]),
            Route("/report", report_page),
            Route("/events", events),
            Route("/login", login_page),
            Route("/login", login_post, methods=["POST"]),
            Route("/logout", logout_post, methods=["POST"]),
            Route("/healthz", healthz),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]
    )
    return SecurityHeaders(app)


def _safe_next(value: str | None) -> str:
    """A page to return to after signing in: only a path on this console."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value or len(value) > 2048:
        return "/"
    return value


def _report_file(ctx: ConsoleContext, report_path: str) -> Path | None:
    """The HTML file of a report in the store, when it lies inside the store (never outside it)."""
    if ctx.report_dir is None:
        return None
    root = os.path.realpath(ctx.report_dir)
    base = report_path[: -len(".json")] if report_path.endswith(".json") else report_path
    candidate = os.path.realpath(os.path.join(root, base + ".html"))
    if os.path.commonpath([root, candidate]) != root or not os.path.isfile(candidate):
        return None
    return Path(candidate)
