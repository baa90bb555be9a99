"""``lineguard`` commands as real subprocesses, configured the way docker-compose.yml runs them.

``compose_service(name)`` reads a service's command, environment (``${VAR:-default}`` resolved to
the default: what runs when nothing is set) and health check from the compose file, so a test
starts exactly the documented set-up and only swaps what names the host: Kafka's address, ports,
secret files, volumes. ``LineguardProcess`` runs one command with its JSON log in a file.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
_VAR = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def resolve(value: Any) -> str:
    """A compose value with ${VAR:-default} replaced by its default."""
    return _VAR.sub(lambda m: m.group(2) or "", str(value))


@dataclass(frozen=True)
class ComposeService:
    command: list[str]
    environment: dict[str, str]
    healthcheck: list[str]  # the test after "CMD" (empty when the service has none)


def compose_service(name: str) -> ComposeService:
    services = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]
    service = services[name]
    check = service.get("healthcheck") or {}
    test = [] if check.get("disable") else [resolve(part) for part in check.get("test", [])]
    if test and test[0] == "CMD":
        test = test[1:]
    return ComposeService(
        command=[resolve(part) for part in service.get("command", [])],
        environment={k: resolve(v) for k, v in (service.get("environment") or {}).items()},
        healthcheck=test,
    )


def lineguard_command() -> list[str]:
    """The installed ``lineguard`` entry point of this interpreter's environment."""
    script = Path(sys.executable).parent / "lineguard"
    return [str(script)] if script.exists() else [sys.executable, "-m", "services.cli"]


def process_env(environment: dict[str, str]) -> dict[str, str]:
    """This process's environment without any LINEGUARD_ variable, this checkout first on the path,
    then ``environment``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEGUARD_")}
    env.update({"PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1", **environment})
    return env


class LineguardProcess:
    """``lineguard ARGS`` as a subprocess; stdout and stderr (JSON log lines) go to ``log_path``."""

    def __init__(self, args: list[str], environment: dict[str, str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in terminate()/kill()
        self.process = subprocess.Popen(
            [*lineguard_command(), *args],
            cwd=REPO_ROOT,
            env=process_env(environment),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far."""
        out = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return out

    def has_event(self, name: str) -> bool:
        return any(e.get("event") == name for e in self.events())

    async def wait_for_event(self, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.has_event(name):
            if self.process.poll() is not None:
                raise AssertionError(
                    f"`lineguard {' '.join(self.args)}` exited ({self.process.returncode}) before "
                    f"{name!r}:\n{self.log_text()[-4000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no {name!r} within {timeout}s:\n{self.log_text()[-4000:]}")
            await asyncio.sleep(0.1)

    async def wait_exit(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"still running after {timeout}s:\n{self.log_text()[-4000:]}")
            await asyncio.sleep(0.1)
        self._log.close()
        return self.process.returncode

    async def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM (a service's clean stop), then its exit code; SIGKILL and fail after ``timeout``."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return await self.wait_exit(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._log.close()


async def run_check(argv: list[str], timeout: float = 10.0) -> int:
    """A health check command (``python -c ...`` as compose runs it, with this interpreter)."""
    if argv and argv[0] == "python":
        argv = [sys.executable, *argv[1:]]
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        return await asyncio.wait_for(process.wait(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        return -1
