"""``lineguard`` commands as real subprocesses, configured and stopped the way a plant does it.

``ServiceProcess`` runs one command (the installed ``lineguard`` entry point, this checkout first on
the path) with its JSON log in a file. Its environment is this process's without any
``LINEGUARD_*`` variable, plus the service's own: ``service_env`` makes those from a test's
``Settings``, ``compose_service`` reads them (with the command and the health check) from
docker-compose.yml, ``${VAR:-default}`` resolved to the default. It is stopped by
``shared.lifecycle.stop_process``: SIGTERM (finish the work in flight, commit, exit 0), then
SIGKILL if it has not exited in time.
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, SecretStr

from shared.lifecycle import stop_process
from shared.settings import ENV_PREFIX, Settings

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


def _env_value(value: Any) -> str:
    """A settings value as pydantic-settings reads it back from an environment variable."""
    if value is None:
        return ""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, set | frozenset):
        value = sorted(value)
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, default=str)
    return str(value)


def service_env(
    settings: Settings, *sections: str, log_level: str = "INFO", **values: Mapping[str, Any]
) -> dict[str, str]:
    """The ``LINEGUARD_*`` variables of a service with this test's configuration: the broker, the
    topic prefix, the log level, every field the test set in each named section of ``settings``
    (``"scorer"`` -> ``LINEGUARD_SCORER__*``), then ``values`` per section
    (``explainer={"base_url": ...}``); lists and dicts as JSON, as pydantic-settings reads them."""
    env = {
        f"{ENV_PREFIX}KAFKA_BOOTSTRAP": settings.bootstrap,
        f"{ENV_PREFIX}TOPIC_PREFIX": settings.topic_prefix,
        f"{ENV_PREFIX}LOG_LEVEL": log_level,
    }
    chosen: dict[str, dict[str, Any]] = {}
    for section in sections:
        fields: BaseModel = getattr(settings, section)
        chosen[section] = {k: v for k, v in fields.model_dump(exclude_unset=True).items() if v is not None}
    for section, given in values.items():
        chosen.setdefault(section, {}).update(given)
    for section, fields_set in chosen.items():
        for name, value in fields_set.items():
            env[f"{ENV_PREFIX}{section.upper()}__{name.upper()}"] = _env_value(value)
    return env


def process_env(environment: Mapping[str, str]) -> dict[str, str]:
    """A command's whole environment: this process's without any ``LINEGUARD_*`` variable, this
    checkout first on the path, then ``environment``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update({"PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1", **environment})
    return env


def lineguard_command() -> list[str]:
    """The installed ``lineguard`` entry point of this interpreter's environment."""
    script = Path(sys.executable).parent / "lineguard"
    return [str(script)] if script.exists() else [sys.executable, "-m", "services.cli"]


class ServiceProcess:
    """``lineguard ARGS`` as a subprocess with ``environment`` (its ``LINEGUARD_*`` variables);
    stdout and stderr (JSON log lines) go to ``log_path``. ``program`` runs another entry point
    than ``lineguard`` (a test's wrapper around a service, ``[python, -m, module]``)."""

    def __init__(
        self,
        args: Sequence[str],
        environment: Mapping[str, str],
        log_path: Path,
        program: Sequence[str] | None = None,
    ) -> None:
        self.args = list(args)
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed when the process is reaped
        self.process = subprocess.Popen(
            [*(program or lineguard_command()), *self.args],
            cwd=REPO_ROOT,
            env=process_env(environment),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def __str__(self) -> str:
        return f"`lineguard {' '.join(self.args)}`"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_text()[-chars:]

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
        """Until the log has an event ``name``; an error with the log's tail if the process exits
        first or the time runs out."""
        await self._wait_for(lambda: self.has_event(name), repr(name), timeout)

    async def wait_for_log(self, needle: str, timeout: float) -> None:
        """Until ``needle`` shows anywhere in the log (as ``wait_for_event``)."""
        await self._wait_for(lambda: needle in self.log_text(), repr(needle), timeout)

    async def _wait_for(self, seen: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not seen():
            if self.process.poll() is not None:
                code = self.process.returncode
                raise AssertionError(f"{self} exited ({code}) before {what}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} from {self} within {timeout}s:\n{self.log_tail()}")
            await asyncio.sleep(0.1)

    async def wait_exit(self, timeout: float) -> int:
        """Until the command exits by itself (one that finishes, like ``camera-sim --count N``);
        its exit code. Still running after ``timeout``: killed, and an error."""
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"{self} still running after {timeout}s:\n{self.log_tail()}")
            await asyncio.sleep(0.1)
        self._log.close()
        return self.process.returncode

    async def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, the clean stop, and the exit code (0: stopped cleanly, work committed). Not
        exited within ``timeout``: SIGKILL (``stop_process``), and an error."""
        code = await asyncio.to_thread(stop_process, self.process, timeout)
        self._log.close()
        if code == -signal.SIGKILL:
            raise AssertionError(f"{self} did not exit within {timeout}s of SIGTERM:\n{self.log_tail()}")
        return code

    def kill(self) -> None:
        """SIGKILL: nothing is flushed, committed or closed."""
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
