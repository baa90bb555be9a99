"""The VLM and webhook clients verify TLS by default, trust a configured CA bundle, and neither
the API key, the webhook URL nor an image byte ever reaches a log line (issue 10).

Real TLS servers on localhost with certificates from a private CA made here (``cryptography``).
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.alerts.webhook import post_json
from services.explainer.cli import quiet_http_loggers
from services.explainer.core import Explainer
from shared.telemetry.logging import JsonLineFormatter
from shared.tls import client_context
from tests.support.messages import defect_event
from tests.support.openai_server import FakeOpenAIServer, Reply
from tests.support.reports import answer_json
from tests.support.tls import LocalPki, make_pki
from tests.support.webhook_server import WebhookServer

MakeExplainer = Callable[..., Explainer]
KEY = "sk-live-3f9c2b7a1d5e4c6b8a0f2e4d6c8b0a1f"


@pytest.fixture
def pki(tmp_path: Path) -> LocalPki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def tls_vlm(pki: LocalPki) -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(tls=pki.server_context()) as server:
        yield server


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The root logger as the services set it up (JSON lines), at DEBUG, into a buffer."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLineFormatter())
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG)
    quiet_http_loggers()
    try:
        yield stream
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


async def test_the_vlm_client_trusts_only_what_it_is_told_to(
    pki: LocalPki, tls_vlm: FakeOpenAIServer, make_explainer: MakeExplainer
) -> None:
    untrusting = make_explainer(
        base_url=tls_vlm.base_url, max_attempts=1, when_endpoint_down="fallback", api_key=KEY
    )
    refused = await untrusting.handle(defect_event("f-tls-refused"))
    assert refused.document is not None and refused.document.fallback_reason == "endpoint_down"
    assert tls_vlm.chat_requests() == []  # the handshake failed: nothing (no key, no image) was sent
    tls_vlm.script(Reply(content=answer_json()))
    trusting = make_explainer(base_url=tls_vlm.base_url, ca_file=pki.ca_file, api_key=KEY)
    accepted = await trusting.handle(defect_event("f-tls-ok"))
    assert accepted.document is not None and accepted.document.source == "vlm"
    other = make_pki(pki.ca_file.parent.parent / "other-ca")
    elsewhere = make_explainer(
        base_url=tls_vlm.base_url, ca_file=other.ca_file, max_attempts=1, when_endpoint_down="fallback"
    )
    wrong_ca = await elsewhere.handle(defect_event("f-tls-other-ca"))
    assert wrong_ca.document is not None and wrong_ca.document.fallback_reason == "endpoint_down"
    assert len(tls_vlm.chat_requests()) == 1


def test_the_webhook_client_verifies_tls_against_the_configured_ca(pki: LocalPki) -> None:
    with WebhookServer(tls=pki.server_context()) as server:
        refused = post_json(
            server.url, {"text": "x"}, 5.0, None, client_context(None, "LINEGUARD_ALERTS__CA_FILE")
        )
        assert not refused.ok and refused.retryable and "SSLCertVerificationError" in refused.detail
        assert server.delivered() == []
        delivered = post_json(
            server.url, {"text": "x"}, 5.0, None, client_context(pki.ca_file, "LINEGUARD_ALERTS__CA_FILE")
        )
        assert delivered.ok and server.delivered() == [{"text": "x"}]
        assert server.url not in refused.detail


async def test_no_secret_and_no_image_byte_in_any_log_line(
    tmp_path: Path, json_log: io.StringIO, vlm_server: FakeOpenAIServer, make_explainer: MakeExplainer
) -> None:
    key_file = tmp_path / "vlm_key"
    key_file.write_text(KEY + "\n")
    vlm_server.script(
        Reply(status=500, content=f"echoing your key {KEY}"),
        Reply(raw_body=b"<html>oops</html>", content_type="text/html"),
        Reply(content='{"anomalous": true'),  # invalid: repaired
        Reply(content=answer_json(confidence=0.2)),
        Reply(content=answer_json()),  # the follow-up
        Reply(status=401, content="bad key"),
    )
    explainer = make_explainer(
        api_key=None, api_key_file=key_file, max_attempts=3, follow_up_below=0.5, structured_outputs=False
    )
    event = defect_event("f-secrets")
    first = await explainer.handle(event)
    second = await explainer.handle(defect_event("f-secrets-2", seed=3))
    assert first.document is not None and second.document is not None
    assert vlm_server.chat_requests()[0].headers["authorization"] == f"Bearer {KEY}"
    logged = json_log.getvalue()
    assert logged.count("\n") >= 3  # the failures were logged
    image_b64 = base64.b64encode(event.image).decode()
    for secret in (KEY, KEY[:16], image_b64[:40], base64.b64encode(event.anomaly_map_png).decode()[:40]):
        assert secret not in logged
    assert "data:image" not in logged and "/9j/" not in logged and "iVBOR" not in logged
