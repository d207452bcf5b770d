"""What llm-d's endpoint picker reads from a replica's ``/metrics``, as one reusable assertion.

llm-d's ``core-metrics-extractor`` (llm-d/llm-d-router,
``pkg/epp/framework/plugins/datalayer/extractor/metrics/``) turns each scrape into the figures its
scorers use, through the engine config in ``deploy/llm-d/epp-config.yaml``: queue length, running
requests, KV usage (ours: the projected gauge) and, from an info gauge's labels, the block size
and pool size. It selects one series per metric name: the first that matches (``spec.go``,
``getLatestMetric``; vLLM's text format carries no timestamps). So every name it reads must be a
gauge (``extractValue`` reads gauges and counters only) with exactly one series per engine, or
the picker would score a replica on an arbitrary one. The check is a function so that the router
test can run it on a real replica's page and ``tests/test_llm_d_contract.py`` on hand-written ones.
"""

from __future__ import annotations

from collections import Counter

from prometheus_client.parser import text_string_to_metric_families

#: The per-engine gauges the extractor reads for a ``breadcrumbs-vllm`` endpoint:
#: queuedRequestsSpec, runningRequestsSpec, kvUsageSpec (ours), and vLLM's own KV usage, which
#: the built-in ``vllm`` mapping reads for an unlabelled pod.
PER_ENGINE_GAUGES = (
    "vllm:num_requests_waiting",
    "vllm:num_requests_running",
    "vllm:kv_cache_usage_perc",
    "breadcrumbs_kv_cache_usage_projected_perc",
)
#: cacheInfoSpec: an info-style gauge whose labels carry the cache shape (``extractor.go``,
#: ``populateCacheInfoMetrics`` parses both with ``strconv.Atoi``).
CACHE_INFO = "vllm:cache_config_info"
CACHE_INFO_LABELS = ("block_size", "num_gpu_blocks")


def assert_llm_d_metrics_contract(page: str, engines: int) -> None:
    """Raise AssertionError unless ``page`` (Prometheus text) serves what llm-d's extractor reads
    for a replica of ``engines`` engines: each of :data:`PER_ENGINE_GAUGES` a gauge with exactly
    one series per engine (``engines`` distinct ``engine`` label values), and
    :data:`CACHE_INFO` with integer ``block_size`` and ``num_gpu_blocks`` labels."""
    families = {f.name: f for f in text_string_to_metric_families(page)}
    for name in PER_ENGINE_GAUGES:
        assert name in families, f"{name} is missing from the page"
        family = families[name]
        assert family.type == "gauge", f"{name} is a {family.type}, llm-d reads it as a gauge"
        series = [s for s in family.samples if s.name == name]
        assert all("engine" in s.labels for s in series), (
            f"{name} has a series with no engine label")
        per_engine = Counter(s.labels["engine"] for s in series)
        repeated = {e: n for e, n in per_engine.items() if n > 1}
        assert not repeated, f"{name}: several series for engine(s) {repeated}; llm-d reads one"
        assert len(per_engine) == engines, (
            f"{name}: series for engines {sorted(per_engine)}, expected {engines} engine(s)")
    assert CACHE_INFO in families, f"{CACHE_INFO} is missing from the page"
    info = [s for s in families[CACHE_INFO].samples if s.name == CACHE_INFO]
    assert info, f"{CACHE_INFO} has no series"
    for sample in info:
        for label in CACHE_INFO_LABELS:
            value = sample.labels.get(label, "")
            assert value.isdigit(), f"{CACHE_INFO}: label {label}={value!r} is not an integer"
