"""A camera gateway process that SIGKILLs itself at a precise moment of its n-th batch.

    python -m tests.support.gateway_crash CONFIG STAGE N

STAGE is one of the publisher's stages: ``sent`` (frames and ledger records sent, the transaction
still open), ``committed`` (committed, the files not yet moved away) or ``disposed`` (moved away,
the next transaction not begun). The process runs exactly as ``lineguard camera-gateway --config
CONFIG`` does (settings from the environment, the same service code) and dies by SIGKILL, which
nothing in it can catch or clean up after: what a power cut or the OOM killer would leave behind.
Before dying it prints ``KILLING {"stage": ..., "n": ..., "files": [...]}`` (the batch's files).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from services.camera_gateway import metrics
from services.camera_gateway.config import load_config
from services.camera_gateway.core import Outgoing
from services.camera_gateway.service import run_camera_gateway
from shared.lifecycle import run_service
from shared.settings import Settings


def main(argv: list[str]) -> int:
    config_file, stage, nth = Path(argv[0]), argv[1], int(argv[2])
    config = load_config(config_file)
    seen = 0

    def observe(reached: str, batch: Sequence[Outgoing]) -> None:
        nonlocal seen
        if reached == stage:
            seen += 1
            if seen == nth:
                files = [item.file.name for item in batch if item.file is not None]
                print("KILLING " + json.dumps({"stage": stage, "n": nth, "files": files}), flush=True)
                os.kill(os.getpid(), signal.SIGKILL)

    async def serve(settings: Settings, stop: asyncio.Event) -> None:
        await run_camera_gateway(settings, config, stop, observer=observe)

    return run_service("camera-gateway", serve, metrics.REGISTRY, tracing=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
