"""Plugin pieces that need no engine: the patch surface, ratio resolution, chunk/block rules."""

from __future__ import annotations

import json

import pytest

from breadcrumbs_vllm.checkpoint import BreadcrumbsConfig
from breadcrumbs_vllm.spec import BeaconSchedule
from breadcrumbs_vllm.vllm_plugin import patches
from breadcrumbs_vllm.vllm_plugin.compression import (
    RequestCompression,
    cdiv,
    resolve_ceiling,
    resolve_ratio,
)
from breadcrumbs_vllm.vllm_plugin.kv_budget import KVProjection, Riser, escalate
from breadcrumbs_vllm.vllm_plugin.offline import kv_figures


def test_patched_surface_matches_pinned_vllm():
    assert patches.check_surface() == []


def test_two_patches_each_saying_why_vllm_has_no_hook():
    assert [p.name for p in patches.all_patches()] == [
        "frontend-ratio-validation", patches.CONFIG_PATCH]
    doc = patches.__doc__
    for patch in patches.all_patches():
        assert f"``{patch.owner.__name__}.{patch.method}``" in doc


def test_install_is_idempotent_and_names_each_patch():
    patches.install()
    patches.install()
    for patch in patches.all_patches():
        method = getattr(patch.owner, patch.method)
        assert method.__breadcrumbs_patch__ == patch.name
        assert getattr(method.__wrapped__, "__breadcrumbs_patch__", None) is None


def test_resolve_ratio_default_none_and_unsupported():
    bc = BreadcrumbsConfig(beacon_token_id=4, ratios=[2, 4, 8, 16], default_ratio=8)
    assert resolve_ratio(None, bc) == 8
    assert resolve_ratio({"compression_ratio": None}, bc) is None
    assert resolve_ratio({"compression_ratio": "4"}, bc) == 4
    assert resolve_ratio({"compression_ratio": " Auto"}, bc) == "auto"
    with pytest.raises(ValueError, match="supported: 2, 4, 8, 16"):
        resolve_ratio({"compression_ratio": 32}, bc)


def test_ratios_that_may_rise_and_bad_ranges():
    bc = BreadcrumbsConfig(beacon_token_id=4, ratios=[2, 4, 8, 16], default_ratio=8)
    def both(extra_args):
        return resolve_ratio(extra_args, bc), resolve_ceiling(extra_args, bc)
    assert both(None) == (8, None) and both({"compression_ratio": 4}) == (4, None)
    assert both({"compression_ratio": "auto"}) == ("auto", 16)
    assert both({"compression_ratio": {"min": 4, "max": 16}}) == (4, 16)
    assert both({"compression_ratio": 4, "compression_ratio_max": 8}) == (4, 8)
    assert both({"compression_ratio": {"min": None, "max": 8}}) == (None, 8)
    for bad in ({"min": 16, "max": 4}, {"min": 4, "max": 5}, {"min": 3, "max": 16}):
        with pytest.raises(ValueError, match="2, 4, 8, 16"):
            resolve_ratio({"compression_ratio": bad}, bc)


def test_escalation_takes_the_largest_growth_first_until_under_target():
    risers = [Riser("small", 100, 90, 8), Riser("big", 1000, 400, 8),
              Riser("useless", 500, 500, 16), Riser("mid", 600, 300, 4)]
    projection = KVProjection(used=0.5, growth_tokens=2200, capacity_tokens=2000)  # 1.6
    def chosen(target):
        return [r.request_id for r in escalate(risers, projection, target)]
    assert chosen(1.35) == ["big"]  # 1.6 - 600 / 2000 = 1.3
    assert chosen(1.2) == ["big", "mid"]  # then - 300 / 2000 = 1.15
    assert chosen(0.0) == ["big", "mid", "small"]  # "useless" saves nothing: never raised
    assert escalate(risers, KVProjection(0.1, 0, 2000), target=0.9) == []


@pytest.mark.parametrize("prompt_len,ratio", [(5, 2), (33, 4), (64, 16)])
def test_chunks_end_at_prompt_and_beacons_and_slots_are_contiguous(prompt_len, ratio):
    comp = RequestCompression(BeaconSchedule(prompt_len, ratio), beacon_id=4)
    position = 0
    while position < prompt_len + 10 * (ratio + 1):
        limit = comp.chunk_limit(position)
        end = position + limit - 1
        assert end == prompt_len - 1 or comp.schedule.is_beacon(end)
        slots = [comp.schedule.physical_index(i) for i in range(position, end + 1)]
        assert slots == list(range(comp.physical_start(position), slots[0] + limit))
        position += limit


def test_blocks_needed_is_the_rule5_peak_at_a_beacon():
    comp = RequestCompression(BeaconSchedule(40, 8), beacon_id=4)
    for n in range(1, 200):  # beacon after n = 8k generated tokens: logical index of that beacon
        if n % 8:
            continue
        beacon = comp.prompt_len + n + n // 8 - 1
        assert comp.schedule.is_beacon(beacon)
        assert comp.blocks_needed(beacon, 1, 32) == cdiv(40 + n // 8 + 8, 32)


@pytest.mark.parametrize("prompt_len,ratio,block_size", [(5, 2, 32), (33, 4, 32), (64, 16, 64),
                                                         (40, 8, 32)])
def test_a_chunk_needs_at_most_a_block_per_block_size_of_tokens(prompt_len, ratio, block_size):
    """What ``lacks_blocks``' cheap test relies on: after any chunk, the next chunk of ``k``
    tokens needs at most ``cdiv(k, block_size)`` blocks more than the request then holds."""
    comp = RequestCompression(BeaconSchedule(prompt_len, ratio), beacon_id=4)
    position = prompt_len  # the prompt is allocated by vLLM's own path
    held = cdiv(prompt_len, block_size)
    while position < prompt_len + 40 * (ratio + 1):
        limit = comp.chunk_limit(position)
        for k in range(1, limit + 1):
            assert comp.blocks_needed(position, k, block_size) - held <= cdiv(k, block_size)
        held = comp.blocks_needed(position, limit, block_size)  # allocate_slots trims to this
        position += limit


def test_kv_figures_match_the_spec():
    figures = kv_figures(10, 4, 21)
    schedule = BeaconSchedule(10, 4)
    assert figures["peak_kv_entries"] == schedule.peak_kv_entries(20)
    assert figures["num_beacons"] == schedule.num_beacons_fed(20)


def test_stock_models_keep_the_stock_scheduler(tmp_path, tiny_checkpoint):
    from vllm.engine.arg_utils import EngineArgs

    plain = tmp_path / "plain"
    plain.mkdir()
    for f in tiny_checkpoint.iterdir():
        (plain / f.name).write_bytes(f.read_bytes())
    config = json.loads((plain / "config.json").read_text())
    del config["breadcrumbs"]
    (plain / "config.json").write_text(json.dumps(config))
    stock = EngineArgs(model=str(plain), dtype="float32").create_engine_config()
    beacon = EngineArgs(model=str(tiny_checkpoint), dtype="float32").create_engine_config()
    assert "breadcrumbs" not in str(stock.scheduler_config.scheduler_cls)
    assert beacon.scheduler_config.scheduler_cls == patches.SCHEDULER_CLS


def test_stat_logger_is_registered_as_a_vllm_plugin():
    from vllm.plugins import STAT_LOGGER_PLUGINS_GROUP, load_plugins_by_group

    from breadcrumbs_vllm.vllm_plugin.metrics import BreadcrumbsStatLogger

    assert load_plugins_by_group(STAT_LOGGER_PLUGINS_GROUP)["breadcrumbs"] is BreadcrumbsStatLogger


def test_the_accountants_allocate_slots_spells_out_vllms_parameters():
    """Spelled out (not ``*args, **kwargs``) because vLLM calls it per request per step."""
    from vllm.v1.core.kv_cache_manager import KVCacheManager

    from breadcrumbs_vllm.vllm_plugin.scheduler import PhysicalBlockAccountant

    assert patches._params(PhysicalBlockAccountant, "allocate_slots") == \
        patches._params(KVCacheManager, "allocate_slots")
