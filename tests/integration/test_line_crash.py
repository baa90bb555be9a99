"""The scorer as a real process: SIGKILL mid-stream loses and duplicates nothing; SIGTERM exits cleanly."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from services.camera_sim.service import run_camera_sim
from shared.messages.schemas import DeadLetter, Verdict
from shared.settings import Settings
from tests.support.line import LineModels, scorer_process, scorer_settings, sim_options
from tests.support.processes import ServiceProcess
from tests.support.topics import TopicReader
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_killed_and_terminated_scorers_still_commit_exactly_one_verdict_per_frame(
    kafka_settings: Settings, line_models: LineModels, tmp_path: Path
) -> None:
    settings = scorer_settings(kafka_settings)
    options = sim_options(
        count=150, cameras=2, rate=5.0, bad_rate=0.1, run_id="crash", truth=tmp_path / "truth"
    )
    processes: list[ServiceProcess] = []

    def start(name: str) -> ServiceProcess:
        process = scorer_process(settings, line_models.a, tmp_path / f"{name}.log")
        processes.append(process)
        return process

    try:
        async with (
            TopicReader(settings, "verdicts", Verdict) as verdicts,
            TopicReader(settings, "dlq", DeadLetter) as dlq,
        ):
            first = start("first")
            await first.wait_for_log("partitions_assigned", 90)
            sender = asyncio.create_task(run_camera_sim(settings, options))  # ~15 s of frames
            await wait_until(lambda: len(verdicts) >= 15, 90, "verdicts from the first scorer")
            first.kill()  # SIGKILL: an open transaction and uncommitted offsets are left behind

            second = start("second")
            await wait_until(lambda: len(verdicts) >= 60, 120, "verdicts from the second scorer")
            assert await second.terminate() == 0  # SIGTERM mid-stream: finish the batch, commit, exit 0
            log = second.log_text()
            assert '"event": "scorer_stopped"' in log and '"level": "error"' not in log

            third = start("third")
            stats = await sender
            good = stats.sent - stats.bad
            got = await verdicts.wait_for(good, timeout=150, settle=3.0)
            letters = await dlq.wait_for(stats.bad, timeout=30, settle=0.5)
            assert await third.terminate() == 0
    finally:
        for process in processes:
            process.kill()
    ids = Counter(v.frame_id for v in got.values)
    duplicates = {f: n for f, n in ids.items() if n > 1}
    assert not duplicates, f"duplicate verdicts: {duplicates}"
    assert len(ids) == good
    assert len(letters.values) == stats.bad
    assert len({(d.source_partition, d.source_offset) for d in letters.values}) == stats.bad
