from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from services.explainer.core import Explainer, build_explainer
from shared.settings import ExplainerSettings
from tests.support.openai_server import FakeOpenAIServer

API_KEY = "sk-test-0123456789-secret"


@pytest.fixture
def vlm_server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def explainer_settings(vlm_server: FakeOpenAIServer, tmp_path: Path) -> Callable[..., ExplainerSettings]:
    """Settings pointing at the local server, with fast retries and no follow-up unless asked."""

    def make(**overrides: Any) -> ExplainerSettings:
        values: dict[str, Any] = {
            "base_url": vlm_server.base_url,
            "api_key": API_KEY,
            "model": "vision-test",
            "report_dir": tmp_path / "reports",
            "backoff_base_s": 0.01,
            "backoff_max_s": 0.05,
            "request_timeout_s": 2.0,
            "max_attempts": 3,
            "requests_per_minute": 60_000,
            "follow_up_below": 0.0,
            "daily_budget_usd": 10.0,
        }
        values.update(overrides)
        return ExplainerSettings(**values)

    return make


@pytest_asyncio.fixture(loop_scope="function")
async def make_explainer(
    explainer_settings: Callable[..., ExplainerSettings],
) -> AsyncIterator[Callable[..., Explainer]]:
    made: list[Explainer] = []

    def make(**overrides: Any) -> Explainer:
        made.append(build_explainer(explainer_settings(**overrides)))
        return made[-1]

    yield make
    for explainer in made:
        await explainer.aclose()
