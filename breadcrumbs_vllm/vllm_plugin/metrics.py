"""Engine-side Prometheus metrics of the plugin, in prometheus_client's default registry.

vLLM's ``/metrics`` serves the default registry, and so does the gateway in embedded mode, so
these appear next to ``vllm:*``. The ``ratio`` label takes only the ratios a model supports
(bounded cardinality). They are updated in the scheduler's process, so they are served only when
the EngineCore runs in the serving process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``); forwarding
them from a separate EngineCore process through ``SchedulerStats`` is not implemented yet.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge


class CompressionMetrics:
    """One set of ``breadcrumbs_*`` metrics per process (prometheus names must be unique)."""

    _instance: CompressionMetrics | None = None

    def __init__(self) -> None:
        self.beacons = Counter("breadcrumbs_beacons_inserted", "Beacons fed", ["ratio"])
        self.evicted = Counter("breadcrumbs_kv_entries_evicted", "KV entries evicted", ["ratio"])
        self.freed = Counter("breadcrumbs_kv_blocks_freed", "KV blocks returned to the pool early",
                             ["ratio"])
        self.held = Gauge("breadcrumbs_kv_blocks_held", "KV blocks held by compressed requests",
                          ["ratio"])
        self.saved = Gauge("breadcrumbs_kv_blocks_saved",
                           "Blocks the compressed requests would hold uncompressed minus held",
                           ["ratio"])
        self._seen_ratios: set[int] = set()

    @classmethod
    def get(cls) -> CompressionMetrics:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def beacon_inserted(self, ratio: int) -> None:
        self.beacons.labels(ratio=str(ratio)).inc()
        self.evicted.labels(ratio=str(ratio)).inc(ratio)

    def blocks_freed(self, ratio: int, count: int) -> None:
        self.freed.labels(ratio=str(ratio)).inc(count)

    def observe_holdings(self, holdings: dict[int, tuple[int, int]]) -> None:
        """Set the gauges from ``{ratio: (held, uncompressed)}``; absent ratios drop to 0."""
        self._seen_ratios |= set(holdings)
        for ratio in self._seen_ratios:
            held, uncompressed = holdings.get(ratio, (0, 0))
            self.held.labels(ratio=str(ratio)).set(held)
            self.saved.labels(ratio=str(ratio)).set(uncompressed - held)
