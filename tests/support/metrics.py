"""What the metric tests read: every service's metrics module (each declares a ``METRICS``
``ServiceMetrics`` and its ``REGISTRY``), and the standard collectors every registry has."""

from __future__ import annotations

SERVICE_METRIC_MODULES = (
    "services.scorer.metrics",
    "services.explainer.metrics",
    "services.plc_bridge.metrics",
    "services.alerts.metrics",
    "services.camera_gateway.metrics",
    "services.console.metrics",
)
STANDARD_FAMILIES = {
    "process_cpu_seconds",
    "process_resident_memory_bytes",
    "python_gc_collections",
    "python_info",
}
