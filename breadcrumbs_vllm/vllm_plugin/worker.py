"""Worker side: feed beacons, keep positions logical and KV slots physical, compact after a beacon.

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

from breadcrumbs_vllm.vllm_plugin.compression import RequestCompression
from breadcrumbs_vllm.vllm_plugin.kv_layout import KVCompactor
from breadcrumbs_vllm.vllm_plugin.model import BeaconModel


class RunnerCompression:
    """The Breadcrumbs state of one model runner: request lookups and the three step hooks.

    The hooks are patched into ``GPUModelRunner`` for every model, but a runner only runs them
    while they can matter: the first call puts vLLM's own methods in the runner's ``__dict__``
    (:class:`StockPath`), for all three hooks on models without beacons and for the two
    per-step hooks of a beacon model until a compressed request arrives (and again after the
    last one finishes). A beacon model serving uncompressed requests therefore runs the stock
    runner except for one check of the step's new and finished requests, and while compressed
    requests are live every hook's Python work is per compressed request, not per batch row.
    """

    #: The hooks that only act on compressed requests (the first, ``_update_states``, is where
    #: the runner learns that one arrived, so a beacon model always runs it).
    LIVE_HOOKS = ("_prepare_inputs", "_bookkeeping_sync")
    ALL_HOOKS = ("_update_states", *LIVE_HOOKS)

    def __init__(self, runner: Any, beacon_model: BeaconModel) -> None:
        self.runner = runner
        self.beacon_model = beacon_model
        #: The compressed requests the runner knows, registered when they arrive.
        self._requests: dict[str, RequestCompression] = {}
        self._compactor: KVCompactor | None = None
        self._stock_path = StockPath(runner, self.LIVE_HOOKS)

    @classmethod
    def of(cls, runner: Any) -> RunnerCompression | None:
        """The runner's state, created on first use; ``None`` for models without beacons."""
        state = runner.__dict__.get("_breadcrumbs", False)
        if state is False:
            model = BeaconModel.from_model_config(runner.model_config)
            state = cls(runner, model) if model is not None else None
            runner.__dict__["_breadcrumbs"] = state
            StockPath(runner, cls.ALL_HOOKS if state is None else cls.LIVE_HOOKS).take()
        return state

    def _track_requests(self, scheduler_output: Any) -> None:
        """Register new compressed requests and forget finished ones (from the step's output);
        take the stock path while none is left."""
        was_live = bool(self._requests)
        if was_live:
            for req_id in scheduler_output.finished_req_ids:
                self._requests.pop(req_id, None)
        for new in scheduler_output.scheduled_new_reqs:
            comp = self.beacon_model.compression(len(new.prompt_token_ids), new.sampling_params)
            if comp is not None:
                self._requests[new.req_id] = comp
        if self._requests and not was_live:
            self._stock_path.leave()
        elif was_live and not self._requests:
            self._stock_path.take()

    def _batch(self):
        """(batch index, request id, compression) of the compressed requests in the batch."""
        index = self.runner.input_batch.req_id_to_index
        for req_id, comp in self._requests.items():
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
        if not self._requests:
            return
        cached = scheduler_output.scheduled_cached_reqs
        position = dict(zip(cached.req_ids, range(len(cached.req_ids))))  # built in C
        block_size = self._block_table.block_size
        for req_id, comp in self._requests.items():
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
            if self._compactor is None:
                self._compactor = KVCompactor.of(self.runner)
            self._compactor.move(self._block_table.block_table.np[i],
                                 comp.schedule.physical_index(last),
                                 comp.schedule.beacon_home(last))


class StockPath:
    """Routes some of a runner's patched methods straight to vLLM's own code, or back.

    :meth:`take` puts each patched method's original (the ``__wrapped__`` that the patch's
    ``functools.wraps`` records) bound to the runner in its ``__dict__``, which instance lookup
    prefers to the class's wrapper; :meth:`leave` removes them. Methods that are not patched
    are left alone.
    """

    def __init__(self, runner: Any, names: tuple[str, ...]) -> None:
        self.runner = runner
        self.originals = {name: getattr(getattr(type(runner), name), "__wrapped__", None)
                          for name in names}

    def take(self) -> None:
        for name, original in self.originals.items():
            if original is not None:
                self.runner.__dict__[name] = original.__get__(self.runner)

    def leave(self) -> None:
        for name in self.originals:
            self.runner.__dict__.pop(name, None)
