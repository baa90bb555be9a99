"""The console's pages and writes, driven through the real Starlette application (no broker)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from services.console.auth import SESSION_COOKIE, Authenticator
from services.console.core import ConsoleState
from services.console.web import ConsoleContext, build_app
from shared.messages.schemas import Feedback, Report
from tests.support.asgi import AsgiResponse, request
from tests.support.messages import defect_event

TOKEN = "s3cret-token-for-tests"


class Sent:
    def __init__(self) -> None:
        self.feedback: list[Feedback] = []

    async def __call__(self, feedback: Feedback) -> None:
        self.feedback.append(feedback)


@pytest.fixture
def sent() -> Sent:
    return Sent()


def make_ctx(sent: Sent, **overrides: object) -> ConsoleContext:
    state = ConsoleState()
    event = defect_event("frame-7", product="washer", size=(160, 120), region=(100, 10, 30, 8))
    state.add_verdict(event.verdict)
    state.add_evidence(event)
    values: dict[str, object] = {
        "state": state,
        "auth": Authenticator(TOKEN),
        "publish": sent,
        "vocabulary": {"washer": ["scratch", "missing part"]},
        "default_vocabulary": ["stain"],
        "report_dir": None,
    }
    values.update(overrides)
    return ConsoleContext(**values)  # type: ignore[arg-type]


async def sign_in(app: object, name: str = "Ana") -> dict[str, str]:
    response = await request(app, "POST", "/login", form={"name": name, "token": TOKEN, "next": "/"})
    assert response.status == 303, response.text
    return {SESSION_COOKIE: response.cookies[SESSION_COOKIE]}


async def post_feedback(
    app: object, form: dict[str, str] | None, frame_id: str = "frame-7", **options: Any
) -> AsgiResponse:
    """A feedback form for ``frame_id``; ``options`` are ``request``'s (cookies, headers, body)."""
    return await request(app, "POST", "/frame/feedback", query={"id": frame_id}, form=form, **options)


def csrf_of(page: AsgiResponse) -> str:
    marker = 'name="csrf" value="'
    start = page.text.index(marker) + len(marker)
    return page.text[start : page.text.index('"', start)]


async def test_pages_need_an_operator_unless_public(sent: Sent) -> None:
    app = build_app(make_ctx(sent))
    response = await request(app, "GET", "/")
    assert response.status == 303 and response.headers["location"].startswith("/login?next=")
    assert (await request(app, "GET", "/frame/picture", query={"id": "frame-7"})).status == 303
    assert (await request(app, "GET", "/healthz")).status == 200
    public = build_app(make_ctx(sent, public_read=True))
    page = await request(public, "GET", "/")
    assert page.status == 200 and "frame-7" in page.text and 'name="csrf"' not in page.text


async def test_sign_in_with_the_token_only(sent: Sent) -> None:
    app = build_app(make_ctx(sent))
    wrong = await request(app, "POST", "/login", form={"name": "Ana", "token": "not-the-token-at-all"})
    assert wrong.status == 401 and SESSION_COOKIE not in wrong.cookies
    cookies = await sign_in(app)
    page = await request(app, "GET", "/", cookies=cookies)
    assert page.status == 200 and "Ana" in page.text and "washer" in page.text
    forged = {SESSION_COOKIE: cookies[SESSION_COOKIE][:-3] + "AAA"}
    assert (await request(app, "GET", "/", cookies=forged)).status == 303


async def test_failed_sign_ins_are_throttled_per_address(sent: Sent) -> None:
    app = build_app(make_ctx(sent, sign_ins_per_minute=3))
    for _ in range(3):
        assert (await request(app, "POST", "/login", form={"name": "x", "token": "wrong"})).status == 401
    good = await request(app, "POST", "/login", form={"name": "x", "token": TOKEN})
    assert good.status == 429
    other = await request(app, "POST", "/login", form={"name": "x", "token": TOKEN}, client="10.9.9.9")
    assert other.status == 303


async def test_feedback_is_sent_only_by_a_signed_in_operator_with_the_csrf_token(sent: Sent) -> None:
    app = build_app(make_ctx(sent))
    form = {"label": "defect", "defect_type": "scratch", "scorer_region": "0", "drawn_regions": "5,6,10,4"}
    anonymous = await post_feedback(app, form)
    assert anonymous.status == 401
    cookies = await sign_in(app)
    no_csrf = await post_feedback(app, form, cookies=cookies)
    assert no_csrf.status == 403
    page = await request(app, "GET", "/frame", query={"id": "frame-7"}, cookies=cookies)
    assert page.status == 200 and "scratch" in page.text and "missing part" in page.text
    csrf = csrf_of(page)
    cross_site = await post_feedback(
        app, {**form, "csrf": csrf}, cookies=cookies, headers={"origin": "http://evil.example"}
    )
    assert cross_site.status == 403
    assert sent.feedback == []
    ok = await post_feedback(
        app, {**form, "csrf": csrf}, cookies=cookies, headers={"origin": "http://console.test"}
    )
    assert ok.status == 303 and ok.headers["location"] == "/frame?id=frame-7&saved=1"
    (feedback,) = sent.feedback
    assert (feedback.label, feedback.defect_type, feedback.operator) == ("defect", "scratch", "Ana")
    assert feedback.authenticated_by == "token" and (feedback.width, feedback.height) == (160, 120)
    assert [(r.x, r.y, r.width, r.height) for r in feedback.regions] == [(100, 10, 30, 8), (5, 6, 10, 4)]
    assert feedback.regions[1].score == 0.0


async def test_a_csrf_token_of_another_session_is_refused(sent: Sent) -> None:
    app = build_app(make_ctx(sent))
    ana, bo = await sign_in(app, "Ana"), await sign_in(app, "Bo")
    csrf_ana = csrf_of(await request(app, "GET", "/frame", query={"id": "frame-7"}, cookies=ana))
    form = {"label": "good", "csrf": csrf_ana}
    assert (await post_feedback(app, form, cookies=bo)).status == 403
    assert (await post_feedback(app, form, cookies=ana)).status == 303
    assert [f.label for f in sent.feedback] == ["good"]


async def test_invalid_feedback_is_refused_with_a_reason(sent: Sent) -> None:
    app = build_app(make_ctx(sent))
    cookies = await sign_in(app)
    csrf = csrf_of(await request(app, "GET", "/frame", query={"id": "frame-7"}, cookies=cookies))
    cases = [
        ({"label": "maybe"}, "label"),
        (
            {"label": "defect", "defect_type": "stain"},
            "not a defect type",
        ),  # default vocabulary, not washer's
        ({"label": "defect", "drawn_regions": "150,100,20,30"}, "not inside"),
        ({"label": "defect", "scorer_region": "3"}, "no scorer region"),
        ({"label": "good", "defect_type": "scratch"}, "good frame"),
    ]
    for form, reason in cases:
        response = await post_feedback(app, {**form, "csrf": csrf}, cookies=cookies)
        assert response.status == 422 and reason in response.text, (form, response.text)
    unknown = await post_feedback(app, {"label": "good", "csrf": csrf}, "nope", cookies=cookies)
    assert unknown.status == 404
    too_big = await post_feedback(
        app,
        None,
        body=b"comment=" + b"x" * (70 << 10),
        headers={"content-type": "application/x-www-form-urlencoded"},
        cookies=cookies,
    )
    assert too_big.status == 400
    assert sent.feedback == []


async def test_pictures_are_jpegs_of_the_frame_and_its_heatmap(sent: Sent) -> None:
    app = build_app(make_ctx(sent))
    cookies = await sign_in(app)
    for kind, size in (("overlay", None), ("frame", None), ("overlay", "thumb")):
        query = {"id": "frame-7", "kind": kind, **({"size": size} if size else {})}
        response = await request(app, "GET", "/frame/picture", query=query, cookies=cookies)
        assert response.status == 200 and response.headers["content-type"] == "image/jpeg"
        image = Image.open(io.BytesIO(response.body))
        assert image.size == (160, 120)  # a thumbnail is never larger than the frame

    async def picture(kind: str) -> Image.Image:
        query = {"id": "frame-7", "kind": kind}
        response = await request(app, "GET", "/frame/picture", query=query, cookies=cookies)
        return Image.open(io.BytesIO(response.body)).convert("RGB")

    overlay, plain = await picture("overlay"), await picture("frame")
    assert overlay.getpixel((5, 100)) != plain.getpixel((5, 100))  # the heatmap is drawn
    missing = await request(app, "GET", "/frame/picture", query={"id": "nope"}, cookies=cookies)
    assert missing.status == 404


async def test_every_page_carries_a_strict_content_security_policy(sent: Sent) -> None:
    app = build_app(make_ctx(sent))
    cookies = await sign_in(app)
    page = await request(app, "GET", "/", cookies=cookies)
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in page.text


async def test_reports_are_served_from_the_store_only(sent: Sent, tmp_path: Path) -> None:
    store = tmp_path / "reports"
    (store / "2026-01-01/line-1/station-1").mkdir(parents=True)
    (store / "2026-01-01/line-1/station-1/frame-7.html").write_text("<h1>the report</h1>")
    (tmp_path / "secret.html").write_text("not for you")
    ctx = make_ctx(sent, report_dir=store)
    app = build_app(ctx)
    cookies = await sign_in(app)

    def report(path: str) -> Report:
        return Report(
            frame_id="frame-7", line_id="line-1", station_id="station-1", camera_id="cam-1",
            product_class="washer", decision="reject", score=0.8, source="fallback", fallback_reason="x",
            vlm_model="", language="en", grade="C", anomalous=True, confidence=None, summary="A blemish.",
            findings=[], recommended_actions=["Check it."], location_disagreement=False, vlm_disagrees=False,
            report_path=path, prompt_tokens=0, completion_tokens=0, cost_usd=0.0, captured_at=1, created_at=2,
        )  # fmt: skip

    ctx.state.add_report(report("2026-01-01/line-1/station-1/frame-7.json"))
    page = await request(app, "GET", "/frame", query={"id": "frame-7"}, cookies=cookies)
    assert "A blemish." in page.text and "full report" in page.text
    served = await request(app, "GET", "/report", query={"id": "frame-7"}, cookies=cookies)
    assert served.status == 200 and b"the report" in served.body
    assert "sandbox" in served.headers["content-security-policy"]
    ctx.state.add_report(report("../secret.json"))
    assert (await request(app, "GET", "/report", query={"id": "frame-7"}, cookies=cookies)).status == 404


async def test_a_trusted_proxy_names_the_operator_only_from_its_address(sent: Sent) -> None:
    auth = Authenticator(None, proxy_header="X-Forwarded-User", trusted_proxies=["127.0.0.1"])
    app = build_app(make_ctx(sent, auth=auth))
    header = {"x-forwarded-user": "carla"}
    page = await request(app, "GET", "/frame", query={"id": "frame-7"}, headers=header)
    assert page.status == 200 and "carla" in page.text
    spoofed = await request(app, "GET", "/", headers=header, client="192.0.2.10")
    assert spoofed.status == 303
    form = {"label": "good", "csrf": csrf_of(page)}
    posted = await request(app, "POST", "/frame/feedback", query={"id": "frame-7"}, form=form, headers=header)
    assert posted.status == 303
    (feedback,) = sent.feedback
    assert (feedback.operator, feedback.authenticated_by) == ("carla", "proxy")


async def test_the_line_page_shows_the_announcement_history(sent: Sent) -> None:
    from tests.support.messages import history_entry

    ctx = make_ctx(sent, public_read=True)
    promoted = history_entry(
        "m-new", announced_at=2 * 10**18, action="promote", actor="ana", reason="<b>run</b>"
    )
    ctx.state.add_history(history_entry("m-old", announced_at=10**18, actor="bo"))
    ctx.state.add_history(promoted)
    ctx.state.add_announcement(promoted.announcement)
    page = await request(build_app(ctx), "GET", "/")
    assert page.status == 200
    body = page.text[page.text.index('id="models-body"') :]
    assert body.index("m-new") < body.index("m-old")  # newest first
    assert "<td>promote</td>" in body and "<td>ana</td>" in body and "&lt;b&gt;run&lt;/b&gt;" in body
    assert 'id="serving-version">m-new<' in page.text


async def test_sign_out_needs_the_csrf_token_and_ends_the_session(sent: Sent) -> None:
    app = build_app(make_ctx(sent))
    cookies = await sign_in(app)
    csrf = csrf_of(await request(app, "GET", "/", cookies=cookies))
    assert (await request(app, "POST", "/logout", form={}, cookies=cookies)).status == 403
    assert (await request(app, "POST", "/logout", form={"csrf": csrf})).status == 401
    out = await request(app, "POST", "/logout", form={"csrf": csrf}, cookies=cookies)
    assert out.status == 303 and out.headers["location"] == "/login"
    assert out.cookies.get(SESSION_COOKIE, "") == ""  # the browser is told to drop the session
