"""Prometheus metrics: how a service declares them (``ServiceMetrics``) and serves them.

Every service declares its metrics in ``services/<name>/metrics.py`` through one ``ServiceMetrics``:
its own registry with the standard process collectors (``process_*``, ``python_gc_*``,
``python_info``), every name prefixed ``lineguard_<service>_``, and every labelled counter and
histogram created at 0 for each label value known when it is declared, or, for values that come
from the configuration or the model (stations, cameras, product classes), when the service learns
them at start (``prepare``). A series that exists at 0 before its first event is what lets
``increase()`` and ``rate()`` see that first event: a counter that appears at 1 looks unchanged.

Label values that come off the wire (a station in a verdict) are created when first seen; a
service that can, prepares the other values of that key at the same time (``prepare``).

A service that knows whether it is making progress also answers ``/healthz`` on the metrics port:
HTTP 200 with ``{"status": "ok", ...}`` while it is, 503 with the status and why otherwise.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    make_wsgi_app,
    start_http_server,
)
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

HealthCheck = Callable[[], tuple[bool, dict[str, str]]]

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class Configured:
    """A label whose values come from the service's configuration or model at start (stations,
    cameras, product classes): the service passes them to ``ServiceMetrics.prepare``."""

    def __repr__(self) -> str:
        return "CONFIGURED"


CONFIGURED = Configured()
# What a metric's labels may be declared with: the values known in the code (created at 0 now;
# others may still come, created when first seen), or CONFIGURED.
LabelValues = Sequence[str] | Configured


@dataclass
class LabelSpec:
    """A labelled counter's or histogram's labels: the declared kind of each and the values known
    so far (each known combination of values exists as a series)."""

    declared: dict[str, tuple[str, ...] | Configured]
    known: dict[str, list[str]] = field(default_factory=dict)

    def configured(self, label: str) -> bool:
        return isinstance(self.declared[label], Configured)

    def starts_at_zero(self, label: str, value: str) -> bool:
        """Is a series with this value exported at 0 before its first event? True for the values
        declared in the code and for configured labels (any value the configuration can hold)."""
        declared = self.declared[label]
        return isinstance(declared, Configured) or value in declared


class ServiceMetrics:
    """The metrics of one service: ``lineguard_<service>_<name>``, in a registry of its own."""

    def __init__(self, service: str) -> None:
        if not _NAME.match(service):
            raise ValueError(f"service name {service!r} is not snake_case")
        self.service = service
        self.prefix = f"lineguard_{service}_"
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.specs: dict[str, LabelSpec] = {}  # by sample name (..._total, ..._bucket)
        self._by_metric: dict[int, LabelSpec] = {}

    def counter(
        self, name: str, documentation: str, labels: Mapping[str, LabelValues] | None = None
    ) -> Counter:
        """A counter (exported as ``..._total``); ``labels``: each label's known values or CONFIGURED."""
        self._check(name)
        metric = Counter(self.prefix + name, documentation, list(labels or {}), registry=self.registry)
        self._declare(metric, self.prefix + name + "_total", labels)
        return metric

    def histogram(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        labels: Mapping[str, LabelValues] | None = None,
    ) -> Histogram:
        self._check(name)
        metric = Histogram(
            self.prefix + name, documentation, list(labels or {}), buckets=buckets, registry=self.registry
        )
        self._declare(metric, self.prefix + name + "_bucket", labels)
        return metric

    def gauge(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
        """A gauge; a labelled one has a series once the service sets it (0 is a reading, not a
        placeholder, so gauges are not created ahead)."""
        self._check(name)
        return Gauge(self.prefix + name, documentation, list(labels), registry=self.registry)

    def info(self, name: str, documentation: str) -> Info:
        self._check(name)
        return Info(self.prefix + name, documentation, registry=self.registry)

    # Metrics several services have, declared in one place so they mean the same everywhere.
    def dead_letters(self, reasons: Sequence[str], what: str = "Records") -> Counter:
        return self.counter(
            "dead_letters", f"{what} sent to the dead-letter topic, by reason", {"reason": reasons}
        )

    def consumer_lag(self, topic: str) -> Gauge:
        return self.gauge(
            "consumer_lag",
            f"Records of the {topic} topic not yet read (transaction markers not counted), by partition",
            ["partition"],
        )

    def transactions(self, outcomes: Sequence[str], what: str) -> Counter:
        return self.counter(
            "transactions",
            f"Kafka transactions ({what}), by outcome ({', '.join(outcomes)})",
            {"outcome": outcomes},
        )

    def evictions(self, maps: Sequence[str]) -> Counter:
        return self.counter(
            "evictions",
            f"Entries dropped from a capped in-memory map because it was full, by map ({', '.join(maps)})",
            {"map": maps},
        )

    def prepare(self, metric: Counter | Histogram, **values: Iterable[str]) -> None:
        """Make these label values known and create, at 0, every series they complete (crossed with
        the known values of the other labels). Values already known cost a lookup."""
        spec = self._by_metric[id(metric)]
        for label, given in values.items():
            if label not in spec.declared:
                raise ValueError(f"no label {label!r} on this metric")
            known = spec.known[label]
            new = [v for v in dict.fromkeys(given) if v not in known]
            if not new:
                continue
            known.extend(new)
            axes = [new if name == label else spec.known[name] for name in spec.declared]
            for combination in itertools.product(*axes):
                metric.labels(*combination)

    def _declare(
        self, metric: Counter | Histogram, sample: str, labels: Mapping[str, LabelValues] | None
    ) -> None:
        if not labels:
            return
        declared: dict[str, tuple[str, ...] | Configured] = {
            name: values if isinstance(values, Configured) else tuple(values)
            for name, values in labels.items()
        }
        spec = LabelSpec(declared, {name: [] for name in declared})
        self.specs[sample] = spec
        self._by_metric[id(metric)] = spec
        closed = {k: v for k, v in declared.items() if not isinstance(v, Configured)}
        self.prepare(metric, **closed)

    def _check(self, name: str) -> None:
        if not _NAME.match(name) or name.startswith("lineguard_") or name.endswith("_total"):
            raise ValueError(f"metric name {name!r}: snake_case, without the prefix or _total")


def count_buckets(largest: int) -> tuple[float, ...]:
    """Histogram bounds for whole counts (frames per batch): halfway between whole numbers, each
    count up to 8, then doubling up to ``largest``. A bucket then holds whole counts only, so a
    quantile interpolated inside it lands on the count: batches of one have p50 1 (with bounds at
    1, 2, 4, ... the lowest bucket spans 0 to 1 and p50 reads 0.5)."""
    bounds = [0.5 + n for n in range(min(largest, 8) + 1)]
    size = 16
    while size <= largest:
        bounds.append(size + 0.5)
        size *= 2
    if bounds[-1] < largest:
        bounds.append(largest + 0.5)
    return tuple(bounds)


def start_metrics_server(
    port: int,
    registry: CollectorRegistry | None = None,
    addr: str = "0.0.0.0",
    health: HealthCheck | None = None,
) -> None:
    """Serve ``/metrics`` (and ``/healthz`` when given ``health``) on ``port``; port 0 means the
    service exports no HTTP endpoint."""
    if not port:
        return
    if health is None:
        start_http_server(port, addr=addr, registry=registry or DEFAULT_REGISTRY)
        return
    app = _with_health(make_wsgi_app(registry or DEFAULT_REGISTRY), health)
    server = make_server(addr, port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()


def _with_health(metrics_app: Any, health: HealthCheck) -> Any:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/healthz":
            return metrics_app(environ, start_response)
        healthy, body = health()
        data = json.dumps(body).encode()
        status = "200 OK" if healthy else "503 Service Unavailable"
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    return app


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes and probes are not worth a log line each."""
