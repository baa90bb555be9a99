"""The engine's vocabulary loads without torch or faiss, so the CLI and message schemas can use it."""

from __future__ import annotations

import subprocess
import sys

from shared.engine.config import Decision, FitConfig


def test_the_vocabulary_imports_no_torch_or_faiss() -> None:
    code = (
        "import sys, shared.engine.config, shared.engine.scorers.registry, services.model_tools.cli; "
        "print(sorted(m for m in ('torch', 'faiss', 'timm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_decisions_are_their_wire_strings() -> None:
    assert [str(d) for d in Decision] == ["pass", "reject", "review", "error"]
    assert Decision("reject") is Decision.REJECT and Decision.REVIEW.is_defect and not Decision.PASS.is_defect
    assert FitConfig().scorer == "knn"
