"""Prometheus metrics of ``lineguard shadow`` and ``lineguard loop check``, in their own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

REGISTRY = CollectorRegistry()

FRAMES = Counter(
    "lineguard_shadow_frames",
    "Frames a shadow run read, by outcome (scored; bad: did not decode)",
    ["outcome"],
    registry=REGISTRY,
)
SHADOW_VERDICTS = Counter(
    "lineguard_shadow_verdicts", "Candidate verdicts written to shadow-verdicts", registry=REGISTRY
)
CONFIRMED_NORMALS = Gauge(
    "lineguard_loop_confirmed_normals",
    "Normals confirmed for a class since the serving model (judged good, plus a staging set's)",
    ["product_class"],
    registry=REGISTRY,
)
LABELLED_DEFECTS = Gauge(
    "lineguard_loop_labelled_defects",
    "Defects operators labelled on a class's verdicts from the serving model",
    ["product_class"],
    registry=REGISTRY,
)
REFIT_PROPOSED = Gauge(
    "lineguard_loop_refit_proposed",
    "1 while a refit of the class is proposed (enough confirmed normals or labelled defects)",
    ["product_class"],
    registry=REGISTRY,
)
CHECKS = Counter(
    "lineguard_loop_checks", "Refit checks run, by outcome (ok, failed)", ["outcome"], registry=REGISTRY
)
