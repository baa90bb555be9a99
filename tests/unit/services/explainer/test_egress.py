"""Egress fails closed (issue 10): a class without its own policy gets the strictest one configured.

Each path a class can take to the explainer without an explicit policy is tried against the real
OpenAI-protocol server, which records what actually left: a renamed class, ``unknown``, a
camera-supplied product hint the image did not confirm; and the overrides that say otherwise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from services.explainer.core import Explainer
from services.explainer.policy import egress_for
from shared.engine.config import UNKNOWN
from shared.messages.schemas import DefectEvent
from shared.settings import EgressPolicy, ExplainerSettings
from tests.support.messages import defect_event
from tests.support.openai_server import FakeOpenAIServer, Reply
from tests.support.reports import answer_json

MakeExplainer = Callable[..., Explainer]
LISTED = {"washer": "full", "pcb": "crop"}  # strictest configured: crop


def event(product: str, *, route_confidence: float = 0.97, reason: str = "") -> DefectEvent:
    base = defect_event(f"f-{product}-{route_confidence}", product=product)
    verdict = dataclasses.replace(base.verdict, route_confidence=route_confidence, reason=reason)
    return dataclasses.replace(base, verdict=verdict)


async def sent_images(server: FakeOpenAIServer, explainer: Explainer, defect: DefectEvent) -> int | None:
    """How many pictures left the plant for ``defect`` (None: no request at all)."""
    server.script(Reply(content=answer_json()))
    before = len(server.chat_requests())
    outcome = await explainer.handle(defect)
    assert outcome.document is not None
    requests = server.chat_requests()[before:]
    return len(requests[0].images()) if requests else None


@pytest.mark.parametrize(
    ("name", "defect", "pictures"),
    [
        ("listed full", event("washer"), 3),
        ("listed crop", event("pcb"), 1),
        ("renamed class", event("washer-v2"), 1),
        ("unknown product", event(UNKNOWN, route_confidence=0.0, reason="unknown product"), 1),
        (
            "hint the image contradicts",
            event("washer", route_confidence=0.0, reason="hint 'washer' but routed to 'pcb'"),
            1,
        ),
    ],
)
async def test_a_class_without_its_own_policy_gets_the_strictest(
    name: str, defect: DefectEvent, pictures: int, vlm_server: FakeOpenAIServer, make_explainer: MakeExplainer
) -> None:
    explainer = make_explainer(class_egress=LISTED, egress="full")
    assert await sent_images(vlm_server, explainer, defect) == pictures, name


@pytest.mark.parametrize(
    "defect",
    [event("washer-v2"), event(UNKNOWN, route_confidence=0.0), event("washer", route_confidence=0.0)],
)
async def test_with_a_none_policy_configured_nothing_leaves_for_an_unlisted_class(
    defect: DefectEvent, vlm_server: FakeOpenAIServer, make_explainer: MakeExplainer
) -> None:
    explainer = make_explainer(class_egress={"washer": "full", "secret-part": "none"})
    assert await sent_images(vlm_server, explainer, defect) is None


async def test_unlisted_egress_says_otherwise(
    vlm_server: FakeOpenAIServer, make_explainer: MakeExplainer
) -> None:
    explainer = make_explainer(class_egress={"washer": "full", "secret-part": "none"}, unlisted_egress="crop")
    assert await sent_images(vlm_server, explainer, event("washer-v2")) == 1
    assert await sent_images(vlm_server, explainer, event(UNKNOWN, route_confidence=0.0)) == 1


async def test_an_explicit_policy_for_unknown_is_honoured(
    vlm_server: FakeOpenAIServer, make_explainer: MakeExplainer
) -> None:
    explainer = make_explainer(class_egress={"washer": "full", UNKNOWN: "none", "pcb": "crop"})
    assert await sent_images(vlm_server, explainer, event(UNKNOWN, route_confidence=0.0)) is None
    assert await sent_images(vlm_server, explainer, event("other")) is None  # strictest: none


def test_without_per_class_policies_the_one_policy_applies_to_every_class() -> None:
    settings = ExplainerSettings(egress="crop")
    for defect in (event("washer"), event(UNKNOWN, route_confidence=0.0), event("x", route_confidence=0.0)):
        assert egress_for(settings, defect.verdict) is EgressPolicy.CROP
