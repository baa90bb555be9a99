"""Model hot swap on a real broker: a new model takes over between batches; a bad one is refused."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from pathlib import Path

import pytest

from services.camera_sim.service import run_camera_sim
from services.scorer import metrics
from services.scorer.models import announcement_for, publish_announcement
from shared.messages.schemas import Verdict
from shared.settings import Settings
from tests.support.line import LineModels, running_scorer, scorer_settings, sim_options, tampered_copy
from tests.support.topics import TopicReader
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _failures() -> float:
    return metrics.REGISTRY.get_sample_value("lineguard_scorer_model_load_failures_total") or 0.0


async def test_new_model_announced_mid_stream_takes_over_without_losing_frames(
    kafka_settings: Settings, line_models: LineModels
) -> None:
    settings = scorer_settings(kafka_settings)
    # Frames keep coming until the new model has scored some: a model is swapped in between
    # batches, and on a busy machine loading it can outlast any fixed stream.
    options = sim_options(count=None, cameras=2, rate=8.0, run_id="swap")
    enough = asyncio.Event()
    async with (
        TopicReader(settings, "verdicts", Verdict) as verdicts,
        running_scorer(settings, line_models.a) as scorer,
    ):
        sender = asyncio.create_task(run_camera_sim(settings, options, enough))
        await wait_until(lambda: len(verdicts) >= 10, 60, "verdicts from the first model")
        await publish_announcement(settings, announcement_for(line_models.b))
        await wait_until(lambda: scorer.holder.version == line_models.version_b, 120, "the swap")

        def from_new_model() -> int:
            return sum(v.model_version == line_models.version_b for v in verdicts.received.values)

        await wait_until(lambda: from_new_model() >= 10, 60, "verdicts from the new model")
        enough.set()
        stats = await sender
        got = await verdicts.wait_for(stats.sent, timeout=90)
    assert Counter(v.frame_id for v in got.values) == Counter(f"swap-{i:07d}" for i in range(stats.sent))
    # One model per batch and no way back: in decision order, every verdict after the first one of
    # the new model is from the new model.
    ordered = sorted(got.values, key=lambda v: v.decided_at)
    versions = [v.model_version for v in ordered]
    first_b = versions.index(line_models.version_b)
    assert first_b >= 10 and set(versions[:first_b]) == {line_models.version_a}
    assert set(versions[first_b:]) == {line_models.version_b}


async def test_tampered_or_mismatched_model_is_refused_and_the_old_one_keeps_serving(
    kafka_settings: Settings, line_models: LineModels, tmp_path: Path
) -> None:
    settings = scorer_settings(kafka_settings)
    tampered = tampered_copy(line_models.b, tmp_path / "tampered")
    before = _failures()
    async with (
        TopicReader(settings, "verdicts", Verdict) as verdicts,
        running_scorer(settings, line_models.a) as scorer,
    ):
        await run_camera_sim(settings, sim_options(count=6, run_id="before"))
        await verdicts.wait_for(6, timeout=60, settle=0)
        # 1: the files were changed after the manifest was written.
        bad_files = dataclasses.replace(announcement_for(line_models.b), path=str(tampered))
        await publish_announcement(settings, bad_files)
        await wait_until(lambda: _failures() >= before + 1, 60, "the tampered model to be refused")
        # 2: an intact model, announced with a digest that is not its own.
        wrong_digest = dataclasses.replace(announcement_for(line_models.b), sha256="0" * 64)
        await publish_announcement(settings, wrong_digest)
        await wait_until(lambda: _failures() >= before + 2, 60, "the mismatched model to be refused")
        await run_camera_sim(settings, sim_options(count=6, run_id="after"))
        got = await verdicts.wait_for(12, timeout=60)
        assert scorer.holder.version == line_models.version_a
        assert scorer.watcher.refused == [line_models.version_b, line_models.version_b]
    assert len(got.values) == 12
    assert {v.model_version for v in got.values} == {line_models.version_a}
