"""Prometheus metrics of ``lineguard shadow`` (``lineguard_shadow_*``, ``METRICS``) and of
``lineguard loop check --watch`` (``lineguard_loop_*``, ``LOOP``): each command serves its own
registry. Labelled counters exist at 0 from the start for every outcome."""

from __future__ import annotations

from shared.telemetry.metrics import ServiceMetrics

METRICS = ServiceMetrics("shadow")
REGISTRY = METRICS.registry
LOOP = ServiceMetrics("loop")
LOOP_REGISTRY = LOOP.registry

FRAMES = METRICS.counter(
    "frames",
    "Frames a shadow run read, by outcome (scored; bad: did not decode)",
    {"outcome": ("scored", "bad")},
)
SHADOW_VERDICTS = METRICS.counter("verdicts", "Candidate verdicts written to shadow-verdicts")
CONFIRMED_NORMALS = LOOP.gauge(
    "confirmed_normals",
    "Normals confirmed for a class since the serving model (judged good, plus a staging set's)",
    ["product_class"],
)
LABELLED_DEFECTS = LOOP.gauge(
    "labelled_defects",
    "Defects operators labelled on a class's verdicts from the serving model",
    ["product_class"],
)
REFIT_PROPOSED = LOOP.gauge(
    "refit_proposed",
    "1 while a refit of the class is proposed (enough confirmed normals or labelled defects)",
    ["product_class"],
)
CHECKS = LOOP.counter("checks", "Refit checks run, by outcome (ok, failed)", {"outcome": ("ok", "failed")})
