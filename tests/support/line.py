"""The line's pieces for tests: its models, the camera simulator's options, the scorer's settings,
a scorer in this process or as a real process, and what the line's records carry in their headers.

The models are real: ``efficientnet_lite0`` with its real weights at a small input size and a tiny
bank, fitted on synthetic products (two versions, for the hot-swap tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.camera_sim.core import SimOptions
from services.camera_sim.truth import FRAME_ID_HEADER
from shared.kafka.client import header
from shared.settings import ExplainerSettings, Settings
from tests.support.models import PRODUCTS, fit_synthetic_model
from tests.support.openai_server import FakeOpenAIServer
from tests.support.processes import ServiceProcess, service_env

IMAGE_SIZE = 96  # frames and model input: small keeps two cores fast


@dataclass(frozen=True)
class LineModels:
    a: Path
    b: Path
    version_a: str
    version_b: str


def fit_line_models(root: Path) -> LineModels:
    """Two real models in ``root`` (different seeds, so different versions)."""
    paths, versions = [], []
    for seed in (0, 1):
        path = root / f"model-{seed}"
        model = fit_synthetic_model(path, per_class=10, bank=300, size=IMAGE_SIZE, seed=seed)
        paths.append(path)
        versions.append(model.version)
    assert versions[0] != versions[1]
    return LineModels(paths[0], paths[1], versions[0], versions[1])


def sim_options(**changes: Any) -> SimOptions:
    options = SimOptions(products=PRODUCTS, size=IMAGE_SIZE, pool=16, defect_rate=0.3, rate=20.0, count=20)
    for name, value in changes.items():
        setattr(options, name, value)
    return options


def camera_sim_args(*options: str) -> list[str]:
    """``lineguard camera-sim`` making the line's synthetic products at the line's size, then
    ``options`` (rate, count, defect rate, ...)."""
    products = ",".join(PRODUCTS)
    return ["camera-sim", "--synthetic", "--products", products, "--size", str(IMAGE_SIZE), *options]


def scorer_settings(settings: Settings, **scorer: Any) -> Settings:
    """Test settings for a scorer: its own group and transactional ids, short session timeout."""
    values = {
        "group_id": f"{settings.topic_prefix}-scorer",
        "transactional_id_prefix": f"{settings.topic_prefix}-txn",
        "session_timeout_ms": 6000,
        "torch_threads": 1,
        "decode_threads": 1,
        **scorer,
    }
    return settings.model_copy(update={"scorer": settings.scorer.model_copy(update=values)})


def offline_explainer_env(settings: Settings, report_dir: Path, **explainer: Any) -> dict[str, str]:
    """``lineguard explainer``'s environment with no VLM endpoint (it writes its rule-based fallback
    reports, into ``report_dir``), in the test's own consumer group, then ``explainer``'s values."""
    values = {
        "base_url": "",
        "report_dir": str(report_dir),
        "group_id": f"{settings.topic_prefix}-explainer",
        **explainer,
    }
    return service_env(settings, explainer=values)


def with_explainer(
    settings: Settings, report_dir: Path, vlm: FakeOpenAIServer | None = None, **explainer: Any
) -> Settings:
    """``settings`` with an explainer in the test's own consumer group that asks ``vlm`` (None: no
    endpoint, fallback reports only) with fast retries and no follow-up question, and stores its
    reports in ``report_dir``; then ``explainer``'s values."""
    values = {
        "base_url": vlm.base_url if vlm else None,
        "api_key": "sk-it" if vlm else None,
        "report_dir": report_dir,
        "max_attempts": 2,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
        "requests_per_minute": 60_000,
        "follow_up_below": 0.0,
        "request_timeout_s": 30.0,
        "group_id": f"{settings.topic_prefix}-explainer",
        **explainer,
    }
    return settings.model_copy(update={"explainer": ExplainerSettings(**values)})


def frame_id_of(headers: list[tuple[str, bytes]]) -> str | None:
    value = header(headers, FRAME_ID_HEADER)
    return None if value is None else value.decode()


def traceparent_trace_id(headers: list[tuple[str, bytes]]) -> str | None:
    value = header(headers, "traceparent")
    return None if value is None else value.decode().split("-")[1]


@dataclass
class RunningScorer:
    service: Any  # services.scorer.service.ScorerService
    holder: Any  # services.scorer.models.ModelHolder
    watcher: Any  # services.scorer.models.ModelWatcher
    stop: asyncio.Event


@contextlib.asynccontextmanager
async def running_scorer(settings: Settings, model_dir: Path) -> AsyncIterator[RunningScorer]:
    """A scorer in this process (the service's own classes), stopped gracefully on exit."""
    from services.scorer.models import ModelHolder, ModelWatcher, load_model_dir
    from services.scorer.service import ScorerService

    holder = ModelHolder(await asyncio.to_thread(load_model_dir, model_dir))
    running = RunningScorer(
        ScorerService(settings, holder),
        holder,
        ModelWatcher(settings, holder, from_latest=False),
        asyncio.Event(),
    )
    watcher = asyncio.create_task(running.watcher.run())
    task = asyncio.create_task(running.service.run(running.stop))
    try:
        yield running
    finally:
        running.stop.set()
        try:
            await asyncio.wait_for(task, 60)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)


def scorer_process(
    settings: Settings, model_dir: Path, log_path: Path, log_level: str = "INFO"
) -> ServiceProcess:
    """``lineguard scorer`` as a real subprocess with ``settings`` (see ``scorer_env``)."""
    return ServiceProcess(["scorer", "--model", str(model_dir)], scorer_env(settings, log_level), log_path)


def scorer_env(settings: Settings, log_level: str = "INFO") -> dict[str, str]:
    """A scorer subprocess's ``LINEGUARD_*`` variables: its scorer and claim-check sections."""
    return service_env(settings, "scorer", "claim_check", log_level=log_level)


def tampered_copy(model_dir: Path, target: Path) -> Path:
    """A copy of a model with one byte of its tensors changed (the manifest left as it was)."""
    shutil.copytree(model_dir, target)
    tensors = target / "tensors.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 0xFF
    tensors.write_bytes(bytes(data))
    return target
