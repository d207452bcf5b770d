"""The plugin's Prometheus metrics: counted in the scheduler, exported by a vLLM stat logger.

The scheduler runs in vLLM's EngineCore process, which is a separate process behind
``AsyncLLM`` and vLLM's OpenAI server, while ``/metrics`` is served by the front-end process. So
the two halves are split the way vLLM splits its own metrics, but over the plugin's own channel
(``stats_channel.py``): vLLM's ``SchedulerStats`` stay exactly as stock makes them.

* :class:`CompressionStats` (EngineCore) counts beacons, evictions and freed blocks per ratio
  since start-up; :meth:`CompressionStats.publish` writes those totals, the blocks held and the
  projected KV usage into this engine's shared-memory file (``StatsWriter``).
* :class:`BreadcrumbsStatLogger` (front end) is registered under vLLM's
  ``vllm.stat_logger_plugins`` entry point, so ``AsyncLLM``, the gateway and vLLM's OpenAI server
  load it with no user code. On every ``record()`` of its engine it reads that file
  (``StatsReader``), adds what the cumulative counts gained since its last read to the
  ``breadcrumbs_*`` counters and sets the gauges, in the default registry that ``/metrics``
  serves. Counts are cumulative, so a step whose stats reach another API server (vLLM sends
  each step's stats to one front end only), or none, loses nothing. The offline ``vllm.LLM``
  loads no stat-logger plugins: pass ``stat_loggers=[BreadcrumbsStatLogger]`` to
  ``LLMEngine`` to export there, or read ``scheduler.compression_stats.totals`` in-process.

Every series carries ``model_name`` and ``engine`` (the data-parallel rank), as vLLM's own
``vllm:*`` series do, so under ``--data-parallel-size N`` each engine's figures stay apart. The
``ratio`` label only takes the ratios a model supports (bounded cardinality).
"""

from __future__ import annotations

from collections import Counter as Tally
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from vllm.v1.metrics.loggers import StatLoggerBase

from breadcrumbs_vllm.vllm_plugin.stats_channel import (
    COUNTS,
    Snapshot,
    StatsReader,
    StatsWriter,
)


class CompressionStats:
    """Engine-side compression counts since start-up, and the channel they are published on
    (``None`` when the engine runs without stats: the totals are then for in-process readers,
    such as tests and the benchmark, alone)."""

    def __init__(self, writer: StatsWriter | None = None) -> None:
        self.writer = writer
        self.totals: dict[str, Tally] = {name: Tally() for name in COUNTS}
        self.totals["escalations"] = Tally()  # (from, to) -> count
        self.totals["preemptions"] = Tally()  # "yes" / "no": could a request still rise?
        self.totals["waits"] = Tally()  # "block": steps a request waited for a free block

    def beacon_inserted(self, ratio: int) -> None:
        self.totals["beacons"][ratio] += 1
        self.totals["evicted"][ratio] += ratio

    def blocks_freed(self, ratio: int, count: int) -> None:
        self.totals["freed"][ratio] += count

    def escalated(self, from_ratio: int | None, to_ratio: int) -> None:
        self.totals["escalations"][(from_ratio, to_ratio)] += 1

    def waited(self) -> None:
        self.totals["waits"]["block"] += 1

    def preempted(self, could_rise: bool) -> None:
        self.totals["preemptions"]["yes" if could_rise else "no"] += 1

    def publish(self, holdings: dict[int, tuple[int, int]] | None, projected: float) -> None:
        """Write the totals, ``holdings`` and ``projected`` for the front end's stat logger.

        ``holdings`` is ``{ratio: (blocks held, blocks the same requests would hold
        uncompressed)}`` now, or ``None`` to leave the last ones (the stock path publishes the
        projection alone); ``projected`` the engine's projected KV usage (``kv_budget.py``).
        """
        if self.writer is not None:
            self.writer.publish(self.totals, holdings, projected)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class PrometheusCompressionMetrics:
    """The ``breadcrumbs_*`` Prometheus metrics; one set per process (names must be unique),
    shared by the per-engine stat loggers, which tell their series apart by label.

    ``registry`` is prometheus_client's default one (what ``/metrics`` serves) but in tests,
    whose figures must not leak into a later server's ``/metrics`` in the same process.
    """

    _instance: PrometheusCompressionMetrics | None = None

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        labels = ["model_name", "engine", "ratio"]
        self.counters = {
            "beacons": Counter("breadcrumbs_beacons_inserted", "Beacons fed", labels,
                               registry=registry),
            "evicted": Counter("breadcrumbs_kv_entries_evicted", "KV entries evicted", labels,
                               registry=registry),
            "freed": Counter("breadcrumbs_kv_blocks_freed",
                             "KV blocks returned to the pool early", labels, registry=registry),
        }
        self.held = Gauge("breadcrumbs_kv_blocks_held", "KV blocks held by compressed requests",
                          labels, registry=registry)
        self.saved = Gauge("breadcrumbs_kv_blocks_saved",
                           "Blocks the compressed requests would hold uncompressed minus held",
                           labels, registry=registry)
        self.escalations = Counter(
            "breadcrumbs_ratio_escalations", "Requests whose ratio rose under KV pressure "
            "(kv_budget.py); from is 'none' for one that started uncompressed",
            ["model_name", "engine", "from", "to"], registry=registry)
        self.preemptions = Counter(
            "breadcrumbs_preemptions", "Preemptions in a beacon engine; could_rise says whether "
            "any request could still rise when vLLM preempted",
            ["model_name", "engine", "could_rise"], registry=registry)
        self.waits = Counter(
            "breadcrumbs_block_waits", "Steps in which a running compressed request waited for "
            "a free KV block where vLLM would have preempted a request (requests sent with "
            "\"auto\" or a range, kv_budget.py)", ["model_name", "engine"], registry=registry)
        self.projected = Gauge(
            "breadcrumbs_kv_cache_usage_projected_perc",
            "KV usage projected over the unfinished requests' remaining growth (kv_budget.py): "
            "blocks in use plus what they may still add until max_tokens, over the pool",
            ["model_name", "engine"], registry=registry)

    @classmethod
    def get(cls) -> PrometheusCompressionMetrics:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def apply(self, snapshot: Snapshot, counted: dict[tuple, int], model_name: str,
              engine: str) -> None:
        """Bring one engine's series up to ``snapshot``; ``counted`` holds the cumulative counts
        already added (per series key), and is updated."""
        if snapshot.projected is not None:
            self.projected.labels(model_name, engine).set(snapshot.projected)
        for ratio, figures in snapshot.ratios.items():
            for name, total in figures.counts.items():
                _advance(self.counters[name].labels(model_name, engine, str(ratio)),
                         (name, ratio), total, counted)
            if figures.shown:  # a ratio with no live request drops to 0
                self.held.labels(model_name, engine, str(ratio)).set(figures.held)
                self.saved.labels(model_name, engine, str(ratio)).set(
                    figures.uncompressed - figures.held)
        for (low, high), total in snapshot.escalations.items():
            _advance(self.escalations.labels(model_name, engine, str(low).lower(), str(high)),
                     ("escalations", low, high), total, counted)
        for could_rise, total in snapshot.preemptions.items():
            _advance(self.preemptions.labels(model_name, engine, could_rise),
                     ("preemptions", could_rise), total, counted)
        _advance(self.waits.labels(model_name, engine), ("waits",), snapshot.waits, counted)


def _advance(series: Any, key: tuple, total: int, counted: dict[tuple, int]) -> None:
    """Increment a counter ``series`` by what its cumulative ``total`` gained since last time."""
    gained = total - counted.get(key, 0)
    if gained > 0:
        series.inc(gained)
        counted[key] = total


class BreadcrumbsStatLogger(StatLoggerBase):
    """vLLM stat logger (front-end process) that exports the scheduler's compression figures.

    vLLM builds one per engine (``PerEngineStatLoggerAdapter``) and calls ``record`` with that
    engine's ``SchedulerStats`` after its steps; the figures come from the engine's channel,
    not from those stats, and are labelled by the ``engine_idx`` given. For a model without
    beacons (vLLM's own scheduler, no channel) it does nothing.
    """

    def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
        from breadcrumbs_vllm.vllm_plugin.model import BeaconModel

        self.metrics = PrometheusCompressionMetrics.get()
        model_config = getattr(vllm_config, "model_config", None)
        self.model_name = str(getattr(model_config, "served_model_name", "") or "")
        beacon = BeaconModel.from_model_config(model_config) is not None
        self.reader = StatsReader(vllm_config, engine_index) if beacon else None
        self._counted: dict[tuple, int] = {}

    def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None,
               engine_idx: int = 0) -> None:
        if scheduler_stats is None or self.reader is None:
            return
        snapshot = self.reader.read()
        if snapshot is not None:
            self.metrics.apply(snapshot, self._counted, self.model_name, str(engine_idx))

    def log_engine_initialized(self) -> None:
        pass
