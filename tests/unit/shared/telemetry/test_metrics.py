"""``ServiceMetrics``: one naming scheme, the process collectors, and every labelled counter at 0
for its known label values before its first event (so ``increase()`` sees that event)."""

from __future__ import annotations

import importlib
import itertools

import pytest
from prometheus_client import CollectorRegistry

from shared.telemetry.metrics import CONFIGURED, ServiceMetrics, count_buckets
from tests.support.metrics import SERVICE_METRIC_MODULES, STANDARD_FAMILIES

SERVICE_METRICS = SERVICE_METRIC_MODULES
STANDARD = STANDARD_FAMILIES


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == name
    }


def test_names_are_prefixed_and_the_process_collectors_are_there() -> None:
    m = ServiceMetrics("demo_service")
    m.counter("things", "Things")
    m.gauge("level", "Level")
    names = {f.name for f in m.registry.collect()}
    assert {"lineguard_demo_service_things", "lineguard_demo_service_level"} <= names
    assert names >= STANDARD
    for bad in ("Things", "lineguard_demo_service_x", "things_total", "two words"):
        with pytest.raises(ValueError):
            m.counter(bad, "refused")
    with pytest.raises(ValueError):
        ServiceMetrics("Bad-Name")


def test_known_label_values_exist_at_zero_before_any_event() -> None:
    m = ServiceMetrics("demo")
    drops = m.counter("drops", "Drops", {"reason": ("full", "late"), "kind": ("a", "b")})
    got = samples(m.registry, "lineguard_demo_drops_total")
    assert got == {
        (("kind", k), ("reason", r)): 0.0 for r, k in itertools.product(("full", "late"), ("a", "b"))
    }
    drops.labels(reason="full", kind="a").inc()
    assert samples(m.registry, "lineguard_demo_drops_total")[(("kind", "a"), ("reason", "full"))] == 1.0


def test_configured_values_are_crossed_with_the_known_ones_when_prepared() -> None:
    m = ServiceMetrics("demo")
    fails = m.counter("fails", "Fails", {"station_id": CONFIGURED, "cause": ("x", "y")})
    seen = m.counter("seen", "Seen", {"station_id": (), "decision": ("pass", "reject")})
    hist = m.histogram("size", "Size", (1, 2), {"product_class": CONFIGURED})
    assert samples(m.registry, "lineguard_demo_fails_total") == {}  # nothing configured yet
    m.prepare(fails, station_id=["s1", "s2"])
    m.prepare(fails, station_id=["s2", "s3"])  # known ones are not created twice
    assert len(samples(m.registry, "lineguard_demo_fails_total")) == 6
    assert set(samples(m.registry, "lineguard_demo_fails_total").values()) == {0.0}
    m.prepare(seen, station_id=["st-9"])
    assert samples(m.registry, "lineguard_demo_seen_total") == {
        (("decision", "pass"), ("station_id", "st-9")): 0.0,
        (("decision", "reject"), ("station_id", "st-9")): 0.0,
    }
    m.prepare(hist, product_class=["washer"])
    assert samples(m.registry, "lineguard_demo_size_count") == {(("product_class", "washer"),): 0.0}
    spec = m.specs["lineguard_demo_fails_total"]
    assert spec.starts_at_zero("station_id", "anything") and spec.starts_at_zero("cause", "x")
    assert not spec.starts_at_zero("cause", "z")
    assert not m.specs["lineguard_demo_seen_total"].starts_at_zero("station_id", "st-9")
    with pytest.raises(ValueError):
        m.prepare(fails, nope=["x"])


def test_every_service_declares_through_the_helper_with_its_counters_at_zero() -> None:
    for module_name in SERVICE_METRICS:
        module = importlib.import_module(module_name)
        metrics: ServiceMetrics = module.METRICS
        assert module.REGISTRY is metrics.registry
        families = list(metrics.registry.collect())
        assert {f.name for f in families} >= STANDARD, module_name
        for family in families:
            if family.name.startswith(("process_", "python_")):
                continue
            assert family.name.startswith(metrics.prefix), family.name
            if family.type != "counter":
                continue
            spec = metrics.specs.get(family.name + "_total")
            if spec is None:  # unlabelled: one series from the start (other tests may have counted)
                assert len([s for s in family.samples if s.name.endswith("_total")]) == 1, family.name
                continue
            closed = {k: v for k, v in spec.declared.items() if isinstance(v, tuple)}
            if len(closed) == len(spec.declared) and all(closed.values()):
                # Every combination of known values is a series at 0 before any event.
                totals = [s for s in family.samples if s.name.endswith("_total")]
                assert len(totals) >= len(list(itertools.product(*closed.values()))), family.name


def test_label_names_mean_one_thing_across_services() -> None:
    """One label name per dimension: the same name never carries two different sets of values."""
    meanings = {
        "kind": "operator alert kind",
        "station_id": "station",
        "product_class": "product class",
        "camera_id": "camera",
        "partition": "Kafka partition",
    }
    for module_name in SERVICE_METRICS:
        metrics: ServiceMetrics = importlib.import_module(module_name).METRICS
        for name, spec in metrics.specs.items():
            assert "station" not in spec.declared, f"{name}: station_id, not station"
            if "kind" in spec.declared:
                values = set(spec.declared["kind"])  # type: ignore[arg-type]
                assert values <= {"consecutive_rejects", "unknown_product", "score_drift", "other"}, (
                    f"{name}: kind is the {meanings['kind']}"
                )


def quantile(q: float, bounds: tuple[float, ...], counts: list[float]) -> float:
    """Prometheus' histogram_quantile on cumulative ``counts`` (linear inside a bucket, the lowest
    bucket starting at 0)."""
    rank = q * counts[-1]
    for i, (bound, count) in enumerate(zip(bounds, counts, strict=True)):
        if count >= rank:
            start, below = (bounds[i - 1], counts[i - 1]) if i else (0.0, 0.0)
            return start + (bound - start) * (rank - below) / (count - below)
    raise AssertionError


def test_count_buckets_put_quantiles_of_whole_counts_on_the_count() -> None:
    bounds = count_buckets(256)
    assert bounds[0] == 0.5 and bounds[-1] == 256.5 and list(bounds) == sorted(bounds)
    for size in (1, 2, 5, 8):
        counts = [10.0 if bound > size else 0.0 for bound in bounds]  # ten batches of `size`
        assert quantile(0.5, bounds, counts) == size
    old = (1.0, 2.0, 4.0, 8.0)
    assert quantile(0.5, old, [10.0, 10.0, 10.0, 10.0]) == 0.5  # what the le=1 lowest bucket did
    assert count_buckets(16)[-1] == 16.5 and count_buckets(20)[-1] == 20.5
