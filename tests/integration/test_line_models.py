"""Model hot swap on a real broker: a new model takes over between batches; a bad one is refused.

Announcements are signed: a scorer that trusts a key takes only what that key signed, newer than
what it has taken, from inside its models root; no bad announcement of any kind stops its watcher or
its scoring.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from services.camera_sim.service import run_camera_sim
from services.scorer import metrics
from services.scorer.history import publish_announcement
from services.scorer.models import ModelHolder, ModelWatcher, announcement_for
from services.scorer.trust import KeyFiles, generate_signing_key, load_signing_key, sign_announcement
from shared.kafka.client import make_producer
from shared.kafka.topics import MODEL_ANNOUNCEMENT_KEY
from shared.messages.codec import encode
from shared.messages.schemas import ModelAnnouncement, Verdict
from shared.settings import Settings
from tests.support.line import LineModels, running_scorer, scorer_settings, sim_options, tampered_copy
from tests.support.processes import REPO_ROOT, process_env, service_env
from tests.support.topics import TopicReader
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _failures() -> float:
    return metrics.REGISTRY.get_sample_value("lineguard_scorer_model_load_failures_total") or 0.0


def _refused(reason: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "lineguard_scorer_model_announcements_refused_total", {"reason": reason}
    )
    return value or 0.0


def _announcement(line_models: LineModels, path: Path, **changes: object) -> ModelAnnouncement:
    made = announcement_for(path, models_root=line_models.a.parent)
    return dataclasses.replace(made, **changes)  # type: ignore[arg-type]


async def _publish_raw(settings: Settings, value: bytes) -> None:
    async with make_producer(settings) as producer:
        await producer.send_and_wait(settings.topic("models"), value, key=MODEL_ANNOUNCEMENT_KEY)


async def test_new_model_announced_mid_stream_takes_over_without_losing_frames(
    kafka_settings: Settings, line_models: LineModels
) -> None:
    # No trusted key: unsigned announcements are taken (the scorer warned at start).
    settings = scorer_settings(kafka_settings, models_root=line_models.a.parent)
    before_swap = sim_options(count=30, cameras=2, rate=8.0, run_id="swap-a")
    after_ready = sim_options(count=30, cameras=2, rate=8.0, run_id="swap-b")
    async with (
        TopicReader(settings, "verdicts", Verdict) as verdicts,
        running_scorer(settings, line_models.a) as scorer,
    ):
        sender = asyncio.create_task(run_camera_sim(settings, before_swap))
        await wait_until(lambda: len(verdicts) >= 10, 60, "verdicts from the first model")
        await publish_announcement(settings, _announcement(line_models, line_models.b))
        await wait_until(lambda: scorer.holder.latest_version == line_models.version_b, 60, "model b ready")
        await sender
        # Frames sent once b is ready must be scored by b, however fast the first burst was scored.
        await run_camera_sim(settings, after_ready)
        await wait_until(lambda: scorer.holder.version == line_models.version_b, 60, "the swap")
        got = await verdicts.wait_for(60, timeout=60)
    sent = [f"swap-a-{i:07d}" for i in range(30)] + [f"swap-b-{i:07d}" for i in range(30)]
    assert Counter(v.frame_id for v in got.values) == Counter(sent)
    # One model per batch and no way back: in decision order, every verdict after the first one of
    # the new model is from the new model.
    ordered = sorted(got.values, key=lambda v: v.decided_at)
    versions = [v.model_version for v in ordered]
    first_b = versions.index(line_models.version_b)
    assert first_b >= 10 and set(versions[:first_b]) == {line_models.version_a}
    assert set(versions[first_b:]) == {line_models.version_b}
    assert {v.model_version for v in got.values if v.frame_id.startswith("swap-b")} == {line_models.version_b}


async def test_tampered_or_mismatched_model_is_refused_and_the_old_one_keeps_serving(
    kafka_settings: Settings, line_models: LineModels, tmp_path: Path
) -> None:
    settings = scorer_settings(kafka_settings, models_root=line_models.a.parent)
    tampered = tampered_copy(line_models.b, line_models.a.parent / f"tampered-{uuid.uuid4().hex[:8]}")
    before = _failures()
    async with (
        TopicReader(settings, "verdicts", Verdict) as verdicts,
        running_scorer(settings, line_models.a) as scorer,
    ):
        await run_camera_sim(settings, sim_options(count=6, run_id="before"))
        await verdicts.wait_for(6, timeout=60, settle=0)
        # 1: the files were changed after the manifest was written.
        bad_files = dataclasses.replace(_announcement(line_models, line_models.b), path=tampered.name)
        await publish_announcement(settings, bad_files)
        await wait_until(lambda: _failures() >= before + 1, 60, "the tampered model to be refused")
        # 2: an intact model, announced with a digest that is not its own.
        wrong_digest = _announcement(line_models, line_models.b, sha256="0" * 64)
        await publish_announcement(settings, wrong_digest)
        await wait_until(lambda: _failures() >= before + 2, 60, "the mismatched model to be refused")
        await run_camera_sim(settings, sim_options(count=6, run_id="after"))
        got = await verdicts.wait_for(12, timeout=60)
        assert scorer.holder.version == line_models.version_a
        assert scorer.watcher.refused == [line_models.version_b, line_models.version_b]
    assert len(got.values) == 12
    assert {v.model_version for v in got.values} == {line_models.version_a}


@pytest.fixture
def signer(tmp_path: Path) -> KeyFiles:
    return generate_signing_key(tmp_path / "keys", "operator")


def _huge_manifest_copy(line_models: LineModels) -> Path:
    """A copy of model b whose manifest is 9 MiB (over the 8 MiB limit) of valid-looking JSON."""
    import shutil

    target = line_models.a.parent / f"huge-{uuid.uuid4().hex[:8]}"
    shutil.copytree(line_models.b, target)
    text = (target / "manifest.json").read_text()
    (target / "manifest.json").write_text(text[:-2] + ', "padding": "' + "x" * (9 << 20) + '"}\n')
    return target


async def test_a_signed_scorer_refuses_every_bad_announcement_and_keeps_scoring(
    kafka_settings: Settings, line_models: LineModels, signer: KeyFiles, tmp_path: Path
) -> None:
    settings = scorer_settings(kafka_settings, models_root=line_models.a.parent, trusted_keys=[signer.public])
    key = load_signing_key(signer.private)
    stranger = load_signing_key(generate_signing_key(tmp_path / "other", "stranger").private)
    tampered = tampered_copy(line_models.b, line_models.a.parent / f"tampered-{uuid.uuid4().hex[:8]}")
    huge = _huge_manifest_copy(line_models)
    # Recorded before model b is announced: replayed later, it must not take the line back to a.
    old_signed_a = sign_announcement(
        _announcement(line_models, line_models.a, announced_at=time.time_ns() - 10**9), key
    )

    def signed(path: Path, **changes: object) -> bytes:
        # Announced as version a while b serves (an announcement of the serving version is a no-op).
        made = _announcement(line_models, line_models.b, model_version=line_models.version_a, **changes)
        return encode(sign_announcement(dataclasses.replace(made, path=str(path)), key))

    def forged() -> bytes:
        made = sign_announcement(_announcement(line_models, line_models.b), key)
        return encode(dataclasses.replace(made, path=tampered.name))

    # Made when sent (each newer than the last one taken, so that only its own fault shows).
    bad: list[tuple[str, Callable[[], bytes]]] = [
        ("malformed", lambda: b"\xc1 not msgpack at all"),
        ("malformed", lambda: b"\x81\xa6schema\xa3foo"),
        ("unsigned", lambda: encode(_announcement(line_models, line_models.b))),
        (
            "unknown_key",
            lambda: encode(sign_announcement(_announcement(line_models, line_models.b), stranger)),
        ),
        ("bad_signature", forged),
        ("outside_models_root", lambda: signed(Path("..") / line_models.b.name)),
        ("outside_models_root", lambda: signed(tmp_path)),
        ("bad_artifact", lambda: signed(Path("no-such-model"))),
        ("bad_artifact", lambda: signed(Path(tampered.name))),
        ("bad_artifact", lambda: signed(Path(huge.name))),
        ("digest_mismatch", lambda: signed(Path(line_models.b.name), sha256="0" * 64)),
        ("stale", lambda: encode(old_signed_a)),
        ("future", lambda: signed(Path(line_models.b.name), announced_at=time.time_ns() + 3600 * 10**9)),
    ]
    async with (
        TopicReader(settings, "verdicts", Verdict) as verdicts,
        running_scorer(settings, line_models.a) as scorer,
    ):
        await run_camera_sim(settings, sim_options(count=4, run_id="start"))
        await verdicts.wait_for(4, timeout=60, settle=0)
        # A good signed announcement of b: taken.
        await publish_announcement(
            settings, sign_announcement(_announcement(line_models, line_models.b), key)
        )
        await wait_until(lambda: scorer.holder.latest_version == line_models.version_b, 60, "model b")
        for reason, make in bad:
            before = _refused(reason)
            await _publish_raw(settings, make())
            await wait_until(lambda r=reason, b=before: _refused(r) >= b + 1, 60, f"a refusal for {reason}")
            assert scorer.holder.latest_version == line_models.version_b, reason
        await run_camera_sim(settings, sim_options(count=4, run_id="after"))
        got = await verdicts.wait_for(8, timeout=60, settle=0)
        assert {v.model_version for v in got.values[4:]} == {line_models.version_b}
        # The watcher is still there: a roll-back to a, signed by the real command, is taken.
        command = [sys.executable, "-m", "services.cli", "announce", "--model", str(line_models.a)]
        done = await asyncio.to_thread(
            subprocess.run,
            [*command, "--signing-key", str(signer.private)],
            cwd=REPO_ROOT,
            env=process_env(
                service_env(scorer_settings(kafka_settings, models_root=line_models.a.parent), "scorer")
            ),
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, done.stderr
        assert signer.key_id in done.stdout
        await wait_until(
            lambda: scorer.holder.latest_version == line_models.version_a, 60, "the roll-back to a"
        )


async def test_a_scorer_starting_without_a_model_serves_the_newest_signed_announcement(
    kafka_settings: Settings, line_models: LineModels, signer: KeyFiles
) -> None:
    settings = scorer_settings(kafka_settings, models_root=line_models.a.parent, trusted_keys=[signer.public])
    key = load_signing_key(signer.private)
    now = time.time_ns()
    first_a = sign_announcement(_announcement(line_models, line_models.a, announced_at=now - 2 * 10**9), key)
    then_b = sign_announcement(_announcement(line_models, line_models.b, announced_at=now - 10**9), key)
    for announcement in (first_a, then_b):
        await publish_announcement(settings, announcement)
    # After them: an unsigned announcement and a replay of the first one. The last record on the
    # topic is therefore not the model to serve; the newest signed announcement is.
    await publish_announcement(settings, _announcement(line_models, line_models.a))
    await publish_announcement(settings, first_a)
    holder = ModelHolder()
    watcher = ModelWatcher(settings, holder, from_latest=True)
    task = asyncio.create_task(watcher.run())
    try:
        await asyncio.wait_for(holder.wait_available(), 90)
        assert holder.latest_version == line_models.version_b
        before = _refused("stale")
        await publish_announcement(settings, first_a)  # replayed again, live
        await wait_until(lambda: _refused("stale") >= before + 1, 60, "the live replay to be refused")
        assert holder.current().version == line_models.version_b and not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
