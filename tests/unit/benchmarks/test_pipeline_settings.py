"""The pipeline benchmark's ``--claim-check``: simulator and scorer subprocess share one folder store."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.pipeline import line_settings
from shared.settings import ENV_PREFIX
from tests.support.line import scorer_env


def test_without_claim_check_frames_go_inline(tmp_path: Path) -> None:
    settings = line_settings("localhost:9092", argparse.Namespace(claim_check=None), tmp_path)
    assert settings.claim_check.url is None


def test_claim_check_reaches_the_scorer_subprocess(tmp_path: Path) -> None:
    settings = line_settings("localhost:9092", argparse.Namespace(claim_check=262144), tmp_path)
    assert settings.claim_check.url == str(tmp_path / "frames-store")
    env = scorer_env(settings)
    assert env[f"{ENV_PREFIX}CLAIM_CHECK__URL"] == str(tmp_path / "frames-store")
    assert env[f"{ENV_PREFIX}CLAIM_CHECK__INLINE_MAX_BYTES"] == "262144"
