from services.explainer import metrics


def test_metrics_registry_exports_the_promised_series() -> None:
    metrics.VLM_REQUESTS.labels("ok")
    metrics.FALLBACKS.labels("no_endpoint")
    metrics.REPORTS.labels("vlm")
    metrics.CONSUMER_LAG.labels("0")
    names = {m.name for m in metrics.REGISTRY.collect()}
    for name in (
        "lineguard_explainer_vlm_requests",
        "lineguard_explainer_vlm_request_seconds",
        "lineguard_explainer_vlm_tokens",
        "lineguard_explainer_vlm_cost_usd",
        "lineguard_explainer_budget_remaining_usd",
        "lineguard_explainer_fallback_reports",
        "lineguard_explainer_consumer_lag",
        "lineguard_explainer_reports",
        "lineguard_explainer_held_events",
    ):
        assert name in names
