"""The plugin's stats channel: the scheduler's figures reach the stat logger while vLLM's
``SchedulerStats`` stay as stock makes them (``stats_channel.py``)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

from breadcrumbs_vllm.vllm_plugin import stats_channel
from breadcrumbs_vllm.vllm_plugin.metrics import (
    BreadcrumbsStatLogger,
    CompressionStats,
    PrometheusCompressionMetrics,
)
from breadcrumbs_vllm.vllm_plugin.stats_channel import StatsReader, StatsWriter


@pytest.fixture
def shm(tmp_path, monkeypatch) -> Path:
    """A private directory for the channel's files, so the test sees exactly its own."""
    monkeypatch.setattr(stats_channel, "DIRECTORY", tmp_path)
    monkeypatch.setattr(StatsWriter.__init__, "__defaults__", (tmp_path,))
    monkeypatch.setattr(StatsReader.__init__, "__defaults__", (tmp_path,))
    return tmp_path


def _config(instance: str, engine: int = 0, beacon: bool = True) -> SimpleNamespace:
    block = {"beacon_token_id": 4, "ratios": [2, 8], "default_ratio": None}
    hf_config = SimpleNamespace(breadcrumbs=block) if beacon else SimpleNamespace()
    return SimpleNamespace(
        instance_id=instance, parallel_config=SimpleNamespace(data_parallel_index=engine),
        model_config=SimpleNamespace(hf_config=hf_config, served_model_name="m"))


def _logger(config, engine: int, registry: CollectorRegistry) -> BreadcrumbsStatLogger:
    """A logger writing to ``registry`` (one metrics set per registry, as per process)."""
    logger = BreadcrumbsStatLogger(config, engine_index=engine)
    if registry not in _METRICS:
        _METRICS[registry] = PrometheusCompressionMetrics(registry)
    logger.metrics = _METRICS[registry]
    return logger


_METRICS: dict[CollectorRegistry, PrometheusCompressionMetrics] = {}


def _sample(registry, name: str, engine: str = "0", **labels: str) -> float | None:
    return registry.get_sample_value(name, {"model_name": "m", "engine": engine, **labels})


def test_cumulative_counts_become_counter_increments_and_nothing_is_lost(shm):
    """A logger that misses steps (stats sent to another front end) still counts every beacon;
    each DP engine lands in its own series; the first read claims (unlinks) the file."""
    registry = CollectorRegistry()
    writers = {e: CompressionStats(StatsWriter(_config(f"abc_dp{e}", e), [2, 8]))
               for e in (0, 1)}
    loggers = {e: _logger(_config("abc"), e, registry) for e in (0, 1)}
    assert len(list(shm.iterdir())) == 2
    stats = writers[1]
    for _ in range(3):
        stats.beacon_inserted(8)
    stats.blocks_freed(8, 2)
    stats.escalated(None, 2)
    stats.escalated(2, 8)
    stats.escalated(2, 8)
    stats.preempted(could_rise=False)
    stats.waited()
    stats.waited()
    stats.publish({8: (3, 10)}, projected=0.25)
    loggers[1].record(object(), None, engine_idx=1)
    for low, high, count in (("none", "2", 1), ("2", "8", 2), ("none", "8", None)):
        assert _sample(registry, "breadcrumbs_ratio_escalations_total", "1",
                       **{"from": low, "to": high}) == count
    assert _sample(registry, "breadcrumbs_preemptions_total", "1", could_rise="no") == 1
    assert _sample(registry, "breadcrumbs_block_waits_total", "1") == 2
    assert _sample(registry, "breadcrumbs_beacons_inserted_total", "1", ratio="8") == 3
    assert _sample(registry, "breadcrumbs_kv_entries_evicted_total", "1", ratio="8") == 24
    assert _sample(registry, "breadcrumbs_kv_blocks_saved", "1", ratio="8") == 7
    assert _sample(registry, "breadcrumbs_kv_cache_usage_projected_perc", "1") == 0.25
    assert _sample(registry, "breadcrumbs_kv_blocks_held", "1", ratio="2") is None  # never shown
    assert _sample(registry, "breadcrumbs_beacons_inserted_total", "0", ratio="8") is None
    stats.beacon_inserted(8)
    stats.publish({}, projected=0.5)  # this step's stats go elsewhere: no record() here
    stats.beacon_inserted(8)
    stats.publish(None, projected=0.125)  # stock path: holdings stay as last published
    loggers[1].record(object(), None, engine_idx=1)
    assert _sample(registry, "breadcrumbs_beacons_inserted_total", "1", ratio="8") == 5
    assert _sample(registry, "breadcrumbs_kv_blocks_held", "1", ratio="8") == 0
    assert _sample(registry, "breadcrumbs_kv_cache_usage_projected_perc", "1") == 0.125
    loggers[0].record(object(), None, engine_idx=0)
    assert list(shm.iterdir()) == []  # both claimed: no name left whatever happens next
    writers[0].close()
    writers[1].close()  # idempotent, and harmless after the claim


def test_second_front_end_leaves_a_claimed_engine_alone(shm):
    """``vllm serve`` with N API servers: their own configs carry another instance id; each
    engine is exported by the one API server that claimed its file, never counted twice."""
    stats = CompressionStats(StatsWriter(_config("parent"), [2, 8]))
    stats.beacon_inserted(2)
    stats.publish({}, projected=0.5)
    first, second = CollectorRegistry(), CollectorRegistry()
    a, b = _logger(_config("api0"), 0, first), _logger(_config("api1"), 0, second)
    path = next(shm.iterdir())
    a.reader._claim()
    b.reader._next_look = 0.0
    b.record(object(), None, engine_idx=0)
    a.record(object(), None, engine_idx=0)
    assert _sample(first, "breadcrumbs_beacons_inserted_total", ratio="2") == 1
    assert _sample(second, "breadcrumbs_beacons_inserted_total", ratio="2") is None
    assert not path.exists()


def test_unclaimed_file_goes_at_close_and_a_dead_writers_file_at_the_next_start(shm):
    writer = StatsWriter(_config("x"), [2])
    assert writer.path.exists()
    writer.close()
    assert not writer.path.exists()
    stale = shm / "breadcrumbs-1-999999999-0-gone"  # beyond pid_max: that writer is dead
    stale.write_bytes(b"")
    StatsWriter(_config("y"), [2]).close()
    assert not stale.exists()


def test_stock_model_logger_reads_nothing(shm):
    logger = _logger(_config("z", beacon=False), 0, CollectorRegistry())
    assert logger.reader is None
    logger.record(object(), None, engine_idx=0)


def test_breadcrumbs_scheduler_make_stats_is_stock_and_the_logger_sees_the_figures(
        shm, tiny_checkpoint):
    """A real BreadcrumbsScheduler: a compressed request through enough steps to feed beacons;
    every step's ``SchedulerStats`` keeps ``kv_connector_stats`` ``None`` (no connector, as
    stock), survives vLLM's msgpack round trip unchanged, and the logger exports the figures."""
    import torch
    from vllm.engine.arg_utils import EngineArgs
    from vllm.sampling_params import SamplingParams
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
    from vllm.v1.metrics.stats import SchedulerStats
    from vllm.v1.outputs import ModelRunnerOutput
    from vllm.v1.request import Request
    from vllm.v1.serial_utils import MsgpackDecoder, MsgpackEncoder
    from vllm.v1.structured_output import StructuredOutputManager

    from breadcrumbs_vllm.vllm_plugin.compression import ratio_xargs
    from breadcrumbs_vllm.vllm_plugin.scheduler import BreadcrumbsScheduler

    config = EngineArgs(model=str(tiny_checkpoint), dtype="float32",
                        block_size=16, enable_prefix_caching=False).create_engine_config()
    spec = FullAttentionSpec(block_size=16, num_kv_heads=1, head_size=1, dtype=torch.float32)
    kv_config = KVCacheConfig(num_blocks=64, kv_cache_tensors=[],
                              kv_cache_groups=[KVCacheGroupSpec(["layer"], spec)])
    config.cache_config.num_gpu_blocks = 64
    scheduler = BreadcrumbsScheduler(
        vllm_config=config, kv_cache_config=kv_config, block_size=16, log_stats=True,
        structured_output_manager=StructuredOutputManager(config))
    ratio = min(scheduler.beacon_model.bc.ratios)
    params = SamplingParams(max_tokens=12, ignore_eos=True, extra_args=ratio_xargs(ratio))
    scheduler.add_request(Request("r", list(range(5, 25)), params, None))
    registry = CollectorRegistry()
    logger = _logger(config, 0, registry)
    logger.model_name = "m"
    decoder, encoder = MsgpackDecoder(SchedulerStats), MsgpackEncoder()
    while scheduler.requests:
        output = scheduler.schedule()
        ids = list(output.num_scheduled_tokens)
        runner = ModelRunnerOutput(req_ids=ids, req_id_to_index={r: i for i, r in enumerate(ids)},
                                   sampled_token_ids=[[7] for _ in ids])
        stats = scheduler.update_from_output(output, runner)[0].scheduler_stats
        assert stats.kv_connector_stats is None
        shipped = decoder.decode(encoder.encode(stats))
        assert shipped == stats
        logger.record(shipped, None, engine_idx=0)
    beacons = scheduler.compression_stats.totals["beacons"][ratio]
    assert beacons > 0
    assert _sample(registry, "breadcrumbs_beacons_inserted_total", ratio=str(ratio)) == beacons
    assert _sample(registry, "breadcrumbs_kv_blocks_held", ratio=str(ratio)) == 0  # finished
    assert _sample(registry, "breadcrumbs_kv_cache_usage_projected_perc") == 0.0
    scheduler.shutdown()
    assert list(shm.iterdir()) == []
