"""Engine test fixtures: the thread budget and a small random ViT's weights, made once per session
(the helpers behind them are in ``tests/support/engine.py``; models are fitted once per module)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.support.engine import save_tiny_vit


@pytest.fixture(scope="session", autouse=True)
def _small_thread_budget() -> None:
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_vit_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_vit(tmp_path_factory.mktemp("weights") / "tiny_dinov2.safetensors")
