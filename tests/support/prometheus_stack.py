"""A real Prometheus and Alertmanager (Debian's ``prometheus`` and ``prometheus-alertmanager``,
installed by ``make ops-tools``) on localhost for a test: Prometheus runs the project's own
``deploy/prometheus/prometheus.yml`` with its targets swapped for this test's service ports, the
real alert rules, a fast scrape and evaluation interval, and alerts sent to the Alertmanager, whose
one route goes to a webhook of the test."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from shared.kafka.broker import free_ports
from shared.lifecycle import stop_process
from tests.support.processes import REPO_ROOT

PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"
PROMETHEUS_BIN = "prometheus"
ALERTMANAGER_BINS = ("prometheus-alertmanager", "alertmanager")  # Debian's name, upstream's name


def alertmanager_bin() -> str | None:
    return next((found for name in ALERTMANAGER_BINS if (found := shutil.which(name))), None)


def prometheus_config(
    targets: Mapping[str, str], alertmanager: str, interval_s: float = 1.0
) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with each job's targets replaced by ``targets`` (job name ->
    ``host:port``; a job not given is dropped), the rules from this checkout, and the Alertmanager."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    interval = f"{round(interval_s * 1000)}ms"
    config["global"] = {"scrape_interval": interval, "evaluation_interval": interval}
    config["rule_files"] = [str(PROMETHEUS_DIR / "rules" / "*.yml")]
    jobs = []
    for job in config["scrape_configs"]:
        name = job["job_name"]
        if name in targets:
            jobs.append({"job_name": name, "static_configs": [{"targets": [targets[name]]}]})
    missing = set(targets) - {j["job_name"] for j in jobs}
    assert not missing, f"not jobs of deploy/prometheus/prometheus.yml: {missing}"
    config["scrape_configs"] = jobs
    config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    return config


def alertmanager_config(webhook_url: str) -> dict[str, Any]:
    return {
        "route": {
            "receiver": "test-webhook",
            "group_by": ["alertname"],
            "group_wait": "1s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [{"name": "test-webhook", "webhook_configs": [{"url": webhook_url}]}],
    }


def _get(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


@dataclass
class OpsStack:
    prometheus_url: str
    alertmanager_url: str
    prometheus: subprocess.Popen[bytes]
    alertmanager: subprocess.Popen[bytes]
    logs: Path

    def query(self, expr: str) -> dict[str, Any]:
        """The instant query's whole answer (``status``, ``data`` or ``error``); an HTTP 400/422 (a
        bad query) is returned as its JSON body, not raised."""
        url = f"{self.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            return dict(_get(url))
        except urllib.error.HTTPError as exc:
            return dict(json.loads(exc.read()))

    def values(self, expr: str) -> list[tuple[dict[str, str], float]]:
        answer = self.query(expr)
        assert answer["status"] == "success", answer
        return [(r["metric"], float(r["value"][1])) for r in answer["data"]["result"]]

    def targets(self) -> dict[str, str]:
        """Job name -> health (up, down, unknown) of its active target."""
        data = _get(f"{self.prometheus_url}/api/v1/targets")["data"]["activeTargets"]
        return {t["labels"]["job"]: t["health"] for t in data}

    def alerts(self) -> list[dict[str, Any]]:
        """Prometheus' alerts (pending and firing)."""
        return list(_get(f"{self.prometheus_url}/api/v1/alerts")["data"]["alerts"])

    def log_tail(self, chars: int = 3000) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-chars:]}" for p in sorted(self.logs.glob("*.log"))
        )


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise AssertionError(f"{url} exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} not ready in {timeout}s:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


@contextlib.contextmanager
def ops_stack(workdir: Path, targets: Mapping[str, str], webhook_url: str) -> Iterator[OpsStack]:
    """Alertmanager, then Prometheus scraping ``targets``; both stopped (SIGTERM) on exit."""
    alertmanager = alertmanager_bin()
    assert alertmanager is not None and shutil.which(PROMETHEUS_BIN), "run `make ops-tools`"
    workdir.mkdir(parents=True, exist_ok=True)
    am_port, am_cluster, prom_port = free_ports(3)
    (workdir / "alertmanager.yml").write_text(yaml.safe_dump(alertmanager_config(webhook_url)))
    config = prometheus_config(targets, f"127.0.0.1:{am_port}")
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    am_log, prom_log = workdir / "alertmanager.log", workdir / "prometheus.log"
    with open(am_log, "wb") as am_out, open(prom_log, "wb") as prom_out:
        am = subprocess.Popen(
            [
                alertmanager,
                f"--config.file={workdir / 'alertmanager.yml'}",
                f"--storage.path={workdir / 'alertmanager-data'}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                f"--cluster.listen-address=127.0.0.1:{am_cluster}",
                "--cluster.advertise-address=127.0.0.1:0",
            ],
            stdout=am_out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        prom: subprocess.Popen[bytes] | None = None
        try:
            _wait_ready(f"http://127.0.0.1:{am_port}/-/ready", am, am_log)
            prom = subprocess.Popen(
                [
                    PROMETHEUS_BIN,
                    f"--config.file={workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={workdir / 'prometheus-data'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                ],
                stdout=prom_out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            _wait_ready(f"http://127.0.0.1:{prom_port}/-/ready", prom, prom_log)
            yield OpsStack(f"http://127.0.0.1:{prom_port}", f"http://127.0.0.1:{am_port}", prom, am, workdir)
        finally:
            if prom is not None:
                stop_process(prom, 15)
            stop_process(am, 15)
