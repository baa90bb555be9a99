"""The demo's steps that need no broker: its data set, its model, its child processes and their logs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from shared.engine.config import Decision
from shared.errors import LineguardError
from shared.lifecycle import stop_process
from shared.settings import Settings

if TYPE_CHECKING:
    import numpy as np

    from shared.messages.schemas import Verdict


class DemoError(LineguardError, RuntimeError):
    """A step of the demo failed; the message says which and why."""

    default_reason = "demo"


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


class Children:
    """Subprocesses this demo started; all of them are stopped on the way out."""

    def __init__(self) -> None:
        self._running: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

    def start(
        self, name: str, argv: list[str], env: dict[str, str], log_path: Path
    ) -> subprocess.Popen[bytes]:
        log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        process = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
        self._running.append((name, process, log))
        return process

    def stop(self, process: subprocess.Popen[bytes], timeout_s: float = 20.0) -> int:
        """SIGTERM (a clean shutdown), then SIGKILL if it does not exit in time."""
        code = stop_process(process, timeout_s)
        for entry in [e for e in self._running if e[1] is process]:
            entry[2].close()
            self._running.remove(entry)
        return code

    def stop_all(self) -> None:
        for _, process, _ in reversed(list(self._running)):
            self.stop(process)


def wait_for_log(path: Path, needle: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text(errors="replace"):
            return
        if process.poll() is not None:
            break
        time.sleep(0.2)
    tail = path.read_text(errors="replace")[-2000:] if path.exists() else ""
    raise DemoError(f"{path.name}: no {needle!r} within {timeout_s:.0f}s (exit {process.poll()}):\n{tail}")


def prepare_dataset(data_root: Path, products: list[str], train: int, size: int) -> None:
    """A synthetic MVTec-layout data set under ``data_root``.

    The data set is deterministic in these parameters, so it is regenerated only when they change.
    """
    from shared.synthetic import write_mvtec_dataset

    recipe = json.dumps({"products": sorted(products), "train": train, "size": size})
    marker = data_root / ".complete"
    if marker.exists() and marker.read_text() == recipe:
        return
    say(f"generating a synthetic MVTec-layout dataset of {', '.join(products)} in {data_root} ...")
    shutil.rmtree(data_root, ignore_errors=True)
    write_mvtec_dataset(data_root, products, n_train=train, n_test_good=20, n_test_defect=10, size=size)
    marker.write_text(recipe)


def fit_model(data_root: Path, products: list[str], model_dir: Path, input_size: int, bank_size: int) -> str:
    import torch

    from shared.engine.config import FitConfig
    from shared.engine.fitting import fit_model
    from shared.engine.persistence import save_model

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    train: dict[str, Sequence[Path | np.ndarray]] = {
        p: sorted((data_root / p / "train" / "good").glob("*.png")) for p in products
    }
    model = fit_model(train, FitConfig(input_size=input_size, bank_size=bank_size))
    save_model(model, model_dir)
    return model.version


def child_env(settings: Settings) -> dict[str, str]:
    """The environment of the demo's ``lineguard`` children: this run's broker, topics and groups."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEGUARD_")}
    env.update(
        {
            "LINEGUARD_KAFKA_BOOTSTRAP": settings.bootstrap,
            "LINEGUARD_TOPIC_PREFIX": settings.topic_prefix,
            "LINEGUARD_SCORER__GROUP_ID": f"{settings.topic_prefix}-scorer",
            "LINEGUARD_SCORER__TRANSACTIONAL_ID_PREFIX": f"{settings.topic_prefix}-scorer",
            "LINEGUARD_EXPLAINER__GROUP_ID": f"{settings.topic_prefix}-explainer",
            "LINEGUARD_PLC_BRIDGE__GROUP_ID": f"{settings.topic_prefix}-plc-bridge",
            "LINEGUARD_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def decisions_by_frame(verdicts: Sequence[Verdict]) -> dict[str, str]:
    """Each frame's decision, once (the first verdict of a frame; the line never sends two)."""
    decided: dict[str, str] = {}
    for verdict in verdicts:
        decided.setdefault(verdict.frame_id, verdict.decision)
    return decided


def plc_agreement(station: Mapping[str, Any], verdicts: Sequence[Verdict]) -> tuple[str, bool]:
    """Whether the PLC's counters (written by the bridge over Modbus) match the verdicts: every
    pass counted as a pass, every other decision as a reject."""
    decided = decisions_by_frame(verdicts)
    passes = sum(1 for d in decided.values() if d == Decision.PASS)
    rejects = len(decided) - passes
    agrees = station["pass_count"] == passes and station["reject_count"] == rejects
    text = (
        f"PLC station-1      {station['pass_count']} passes, {station['reject_count']} rejects, "
        f"{station['fail_safe_count']} fail-safe rejects (verdicts: {passes} passes, {rejects} rejects: "
        + ("they agree)" if agrees else "THEY DIFFER)")
    )
    return text, agrees


def report_files(report_dir: Path) -> list[tuple[Path, Path | None]]:
    """The explainer's complete reports under ``report_dir``: (HTML page, overlay picture or None)."""
    found = []
    for json_path in sorted(report_dir.glob("*/*/*/*.json")):
        stem = json_path.name[: -len(".json")]
        html = json_path.with_name(stem + ".html")
        overlay = json_path.with_name(stem + ".overlay.jpg")
        if html.is_file():
            found.append((html, overlay if overlay.is_file() else None))
    return found


def where_to_look(reports: list[tuple[Path, Path | None]], shown: int = 3) -> list[str]:
    """The demo's last lines: which report pages and overlays to open."""
    if not reports:
        return ["reports            none written (see logs/explainer.log)"]
    lines = [f"defect reports     {len(reports)} (fallback reports: no VLM configured), open for example:"]
    for html, overlay in reports[:shown]:
        lines.append(f"  report           file://{html.resolve()}")
        if overlay is not None:
            lines.append(f"  heatmap overlay  file://{overlay.resolve()}")
    return lines
