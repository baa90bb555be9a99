"""``lineguard console`` in a real browser on the real broker.

The console runs as the real command; headless Chromium signs in, watches a reject arrive live (no
reload), opens it, marks it defect with a type, a scorer region and a region drawn with the mouse,
and the judgement is read back from the ``feedback`` topic. A post without a session, or with a
session but without its CSRF token, is refused and sends nothing.

Screenshots: set ``LINEGUARD_CONSOLE_SCREENSHOTS=docs/images`` to refresh the README's pictures;
otherwise they are written to the test's temporary folder (and checked to be pictures).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from shared.kafka.broker import free_port
from shared.kafka.client import make_consumer, make_producer
from shared.messages.codec import decode, encode
from shared.messages.schemas import Feedback, FindingMsg, ModelAnnouncement, Report, Verdict, frame_keys
from shared.settings import Settings
from tests.support.browser import chromium, save_small_png
from tests.support.feedback import synthetic_event
from tests.support.processes import ServiceProcess, service_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "console-token-for-the-browser-test"


async def publish(settings: Settings, topic: str, messages: list[Any], key: bytes = b"station-1") -> None:
    producer = make_producer(settings)
    await producer.start()
    try:
        for message in messages:
            await producer.send_and_wait(settings.topic(topic), encode(message), key=key)
    finally:
        await producer.stop()


async def read_feedback(settings: Settings, timeout_s: float = 10.0) -> list[Feedback]:
    consumer = make_consumer(settings, settings.topic("feedback"), group_id=None)
    await consumer.start()
    try:
        out: list[Feedback] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                out += [decode(r.value, Feedback) for r in records]
        return out
    finally:
        await consumer.stop()


def vlm_report(verdict: Verdict) -> Report:
    """The explainer's report of a reject, as it would arrive on the reports topic."""
    finding = FindingMsg("scratch", "lower left", "moderate", "A bright diagonal scratch across the ring.",
                         "Contact with a fixture edge.", True)  # fmt: skip
    return Report(
        **frame_keys(verdict), product_class=verdict.product_class, decision=verdict.decision,
        score=verdict.score, source="vlm", fallback_reason="", vlm_model="gpt-4o-mini", language="en",
        grade="C", anomalous=True, confidence=0.9, summary="Reject: one moderate scratch on the ring.",
        findings=[finding], recommended_actions=["Inspect the transfer fixture for burrs."],
        location_disagreement=False, vlm_disagrees=False, report_path="x/report.json", prompt_tokens=900,
        completion_tokens=120, cost_usd=0.001, captured_at=verdict.captured_at, created_at=time.time_ns(),
    )  # fmt: skip


async def until(check: Any, timeout_s: float, what: str) -> Any:
    """Poll a blocking browser check from the event loop's thread pool until it returns something."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = await asyncio.to_thread(check)
        if found:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"no {what} within {timeout_s} s")


def post(url: str, body: bytes, cookie: str | None = None) -> int:
    headers = {"content-type": "application/x-www-form-urlencoded"}
    if cookie:
        headers["cookie"] = cookie
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


async def test_an_operator_sees_a_reject_live_and_marks_it_in_the_browser(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    shots = Path(os.environ.get("LINEGUARD_CONSOLE_SCREENSHOTS") or tmp_path / "screenshots")
    token_file = tmp_path / "console_token"
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    env = service_env(kafka_settings)
    env.update(
        {
            "LINEGUARD_CONSOLE__TOKEN_FILE": str(token_file),
            "LINEGUARD_CONSOLE__PORT": str(port),
            "LINEGUARD_METRICS_PORT": str(free_port()),
            "LINEGUARD_LABELS__FRAMES_DIR": str(tmp_path / "frames"),
            "LINEGUARD_EXPLAINER__VOCABULARY": json.dumps({"washer": ["scratch", "dent", "missing part"]}),
        }
    )
    base = f"http://127.0.0.1:{port}"

    # A line already running: a model announced, passes and a review on two stations.
    await publish(
        kafka_settings,
        "models",
        [
            ModelAnnouncement("lg-demo-1", "lg-demo-1", time.time_ns() - 86_400 * 10**9, "a" * 64),
            ModelAnnouncement("lg-demo-2", "lg-demo-2", time.time_ns(), "b" * 64, key_id="3f9c2a1b7d4e5f60"),
        ],
        key=b"current",
    )
    history = []
    for i in range(8):
        product = ("washer", "pcb")[i % 2]
        verdict, _ = synthetic_event(
            f"cam-1-{1000 + i}", product=product, decision="pass", seed=i, defect=None
        )
        history.append(verdict)
    review_verdict, review = synthetic_event(
        "cam-2-2001", product="pcb", defect="spot", decision="review", station_id="station-2", seed=20
    )
    await publish(kafka_settings, "verdicts", [*history, review_verdict])
    await publish(kafka_settings, "defects", [review])

    console = ServiceProcess(["console"], env, tmp_path / "console.log")
    try:
        await console.wait_for_event("console ready", 90)
        with chromium() as driver:
            d: Any = driver

            def sign_in() -> None:
                d.get(base + "/")
                d.find_element(By.ID, "name").send_keys("Ana")
                d.find_element(By.ID, "token").send_keys(TOKEN)
                d.find_element(By.ID, "sign-in").click()

            await asyncio.to_thread(sign_in)
            await until(lambda: d.find_elements(By.ID, "operator"), 20, "signed-in page")
            await until(lambda: "cam-2-2001" in d.page_source, 20, "the review read back at start")

            # A reject arrives while the page is open: it appears without a reload.
            verdict, event = synthetic_event("cam-1-1042", product="washer", defect="scratch", seed=42)
            marker = await asyncio.to_thread(d.execute_script, "return window.performance.timeOrigin;")
            await publish(kafka_settings, "verdicts", [verdict])
            await publish(kafka_settings, "defects", [event])
            row = 'section.station[data-station="station-1"] tr.verdict[data-frame="cam-1-1042"]'
            thumb = '#gallery a.thumb[data-frame="cam-1-1042"]'
            await until(lambda: d.find_elements(By.CSS_SELECTOR, row), 30, "the reject's row")
            await until(lambda: d.find_elements(By.CSS_SELECTOR, thumb), 30, "the reject's heatmap")
            assert (
                await asyncio.to_thread(d.execute_script, "return window.performance.timeOrigin;") == marker
            )
            badge = await asyncio.to_thread(lambda: d.find_element(By.CSS_SELECTOR, row + " .badge").text)
            assert badge == "reject"
            counts = 'tr[data-class="washer"] td[data-decision="reject"]'
            assert await asyncio.to_thread(lambda: d.find_element(By.CSS_SELECTOR, counts).text) == "1"
            await until(
                lambda: d.execute_script(
                    "const i = document.querySelector(arguments[0] + ' img');"
                    "return i.complete && i.naturalWidth;",
                    thumb,
                ),
                20,
                "the heatmap thumbnail loaded",
            )
            assert "lg-demo-2" in await asyncio.to_thread(lambda: d.find_element(By.ID, "serving").text)
            line_png = await asyncio.to_thread(d.get_screenshot_as_png)
            save_small_png(line_png, shots / "console-line.png")

            await publish(kafka_settings, "reports", [vlm_report(verdict)])
            await asyncio.sleep(1.0)  # the console reads it before the frame page is asked for

            # Open it, mark it defect: a type, the scorer's region and one drawn with the mouse.
            await asyncio.to_thread(lambda: d.find_element(By.CSS_SELECTOR, thumb).click())
            await until(lambda: d.find_elements(By.ID, "feedback-form"), 20, "the frame page")
            await until(
                lambda: d.execute_script(
                    "const i = document.getElementById('frame-image'); return i.complete;"
                ),
                20,
                "the frame picture",
            )

            def mark() -> None:
                d.find_element(By.ID, "label-defect").click()
                Select(d.find_element(By.ID, "defect-type")).select_by_value("scratch")
                d.find_element(By.CSS_SELECTOR, 'input[name="scorer_region"][value="0"]').click()
                svg = d.find_element(By.ID, "regions")
                d.execute_script("window.scrollTo(0, 0);")
                size = svg.size
                sx, sy = size["width"] / 224, size["height"] / 224
                # A box a few pixels around the scratch, dragged from its top left corner.
                x0, y0 = (target.x - 4) * sx - size["width"] / 2, (target.y - 4) * sy - size["height"] / 2
                actions = ActionChains(d).move_to_element_with_offset(svg, int(x0), int(y0)).click_and_hold()
                actions.move_by_offset(int((target.width + 8) * sx), int((target.height + 8) * sy)).release()
                actions.perform()
                d.find_element(By.NAME, "comment").send_keys("scratch across the ring")

            report_text = await asyncio.to_thread(lambda: d.find_element(By.ID, "report").text)
            assert "one moderate scratch" in report_text and "grade C" in report_text
            target = verdict.regions[0]
            await asyncio.to_thread(mark)
            assert await asyncio.to_thread(lambda: d.find_element(By.ID, "drawn-count").text) == "1"
            await asyncio.to_thread(d.execute_script, "window.scrollTo(0, 0);")
            frame_png = await asyncio.to_thread(d.get_screenshot_as_png)
            save_small_png(frame_png, shots / "console-frame.png")
            session = await asyncio.to_thread(lambda: d.get_cookie("lineguard_console"))
            await asyncio.to_thread(lambda: d.find_element(By.ID, "send-feedback").click())
            await until(lambda: d.find_elements(By.ID, "saved"), 20, "the confirmation")

        (feedback,) = await read_feedback(kafka_settings)
        assert (feedback.frame_id, feedback.label, feedback.defect_type) == (
            "cam-1-1042",
            "defect",
            "scratch",
        )
        assert (feedback.operator, feedback.authenticated_by) == ("Ana", "token")
        assert (feedback.width, feedback.height) == (224, 224) and feedback.decision == "reject"
        assert feedback.comment == "scratch across the ring" and feedback.model_version == "lg-demo-2"
        chosen, drawn = feedback.regions
        assert chosen == verdict.regions[0]
        expected = (target.x - 4, target.y - 4, target.width + 8, target.height + 8)
        got = (drawn.x, drawn.y, drawn.width, drawn.height)
        assert drawn.score == 0.0 and all(abs(a - b) <= 3 for a, b in zip(got, expected, strict=True)), got
        assert (tmp_path / "frames" / "cam-1-1042.png").is_file()  # kept for the labels export

        # Nothing is written without a signed-in operator and the session's CSRF token.
        body = b"label=good"
        assert post(f"{base}/frame/feedback?id=cam-1-1042", body) == 401
        cookie = f"lineguard_console={session['value']}"
        assert post(f"{base}/frame/feedback?id=cam-1-1042", body, cookie) == 403
        assert post(f"{base}/frame/feedback?id=cam-1-1042", body + b"&csrf=forged", cookie) == 403
        assert len(await read_feedback(kafka_settings, timeout_s=4)) == 1

        for name in ("console-line.png", "console-frame.png"):
            with Image.open(shots / name) as image:
                assert image.size[0] >= 800 and image.size[1] >= 500
        assert await console.terminate() == 0
        assert "Traceback" not in console.log_text()
    finally:
        console.kill()
