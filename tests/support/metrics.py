"""What the metric tests read: every service's metrics module (each declares a ``METRICS``
``ServiceMetrics`` and its ``REGISTRY``), and the standard collectors every registry has."""

from __future__ import annotations

import importlib

from shared.telemetry.metrics import ServiceMetrics

SERVICE_METRIC_MODULES = (
    "services.scorer.metrics",
    "services.explainer.metrics",
    "services.plc_bridge.metrics",
    "services.alerts.metrics",
    "services.camera_gateway.metrics",
    "services.console.metrics",
    "services.shadow.metrics",
)
STANDARD_FAMILIES = {
    "process_cpu_seconds",
    "process_resident_memory_bytes",
    "python_gc_collections",
    "python_info",
}


def all_service_metrics() -> list[ServiceMetrics]:
    """Every ``ServiceMetrics`` the metrics modules declare (a module may serve two commands)."""
    found: list[ServiceMetrics] = []
    for name in SERVICE_METRIC_MODULES:
        module = importlib.import_module(name)
        found += [v for v in vars(module).values() if isinstance(v, ServiceMetrics)]
    return found
