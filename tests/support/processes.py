"""``lineguard`` commands as real subprocesses, each with its whole log (stdout and stderr) in a file."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def service_env(variables: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without any LINEGUARD_ variable, plus ``variables``; the tree under
    test first on the path, so the subprocess runs this checkout's code."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEGUARD_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(variables)
    return env


class LineguardProcess:
    """``python -m services.cli ARGS`` with ``env``; its log in ``log_path``."""

    def __init__(self, args: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", *args],
            cwd=REPO_ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_for_log(self, needle: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.log_text():
            if self.process.poll() is not None:
                raise AssertionError(
                    f"`lineguard {' '.join(self.args)}` exited ({self.process.returncode}) before "
                    f"{needle!r}:\n{self.log_text()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no {needle!r} after {timeout}s:\n{self.log_text()[-3000:]}")
            await asyncio.sleep(0.2)

    async def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"`lineguard {' '.join(self.args)}` still running after {timeout}s")
            await asyncio.sleep(0.2)
        self._log.close()
        return self.process.returncode

    async def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM (the services' clean shutdown), then SIGKILL after ``timeout``; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return await self.wait(timeout)
        finally:
            self.stop()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._log.close()
