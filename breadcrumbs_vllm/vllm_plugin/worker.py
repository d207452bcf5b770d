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
from breadcrumbs_vllm.vllm_plugin.model import BeaconModel


class KVCompactor:
    """Moves one token's K/V between physical slots in every layer's paged cache.

    vLLM's CPU attention keeps per layer ``[num_blocks, kv_heads, block_size, 2 * head_size]``, but
    inside a block the kernel packs K and V in an ISA-specific order, so a token is not one row.
    Rather than hard-code that packing, the compactor asks the kernel: it writes probe tokens with
    ``cpu_attn_reshape_and_cache`` (the op attention itself uses) and records which elements of a
    block-head tile hold each dimension of each in-block offset. Other backends are refused.
    """

    def __init__(self, kv_caches: list[torch.Tensor], block_size: int, isa: str) -> None:
        head_size = None
        for kv in kv_caches:
            if kv.dim() != 4 or kv.shape[2] != block_size or kv.shape[3] % 2:
                raise NotImplementedError(
                    f"breadcrumbs: KV cache layout {tuple(kv.shape)} is not the CPU attention "
                    f"layout [num_blocks, kv_heads, {block_size}, 2*head_size]")
            head_size = kv.shape[3] // 2
        self.tiles = [kv.view(kv.shape[0], kv.shape[1], -1) for kv in kv_caches]
        self.block_size = block_size
        self.token_elements = self._probe(block_size, head_size, kv_caches[0].dtype, isa)

    @staticmethod
    def _probe(block_size: int, head_size: int, dtype: torch.dtype, isa: str) -> torch.Tensor:
        """``[block_size, 2 * head_size]``: tile elements holding K then V of each offset."""
        from vllm import _custom_ops as ops

        cache = torch.zeros(1, 1, 2 * block_size, head_size, dtype=dtype)
        key_cache, value_cache = cache.chunk(2, dim=2)
        codes = torch.arange(1, 2 * head_size + 1, dtype=dtype)
        elements = torch.empty(block_size, 2 * head_size, dtype=torch.long)
        for offset in range(block_size):
            cache.zero_()
            ops.cpu_attn_reshape_and_cache(
                codes[None, None, :head_size], codes[None, None, head_size:], key_cache,
                value_cache, torch.tensor([offset]), isa)
            flat = cache.flatten()
            for code in range(2 * head_size):
                (where,) = torch.nonzero(flat == code + 1, as_tuple=True)
                assert where.numel() == 1, "probe token not found exactly once"
                elements[offset, code] = where[0]
        return elements

    def move(self, block_row: np.ndarray, src: int, dst: int) -> None:
        sb, so = int(block_row[src // self.block_size]), src % self.block_size
        db, do = int(block_row[dst // self.block_size]), dst % self.block_size
        src_el, dst_el = self.token_elements[so], self.token_elements[do]
        for tile in self.tiles:
            tile[db][:, dst_el] = tile[sb][:, src_el]


class RunnerCompression:
    """The Breadcrumbs state of one model runner: request lookups and the three step hooks."""

    def __init__(self, runner: Any, beacon_model: BeaconModel) -> None:
        self.runner = runner
        self.beacon_model = beacon_model
        #: The compressed requests the runner knows, registered when they arrive.
        self._requests: dict[str, RequestCompression] = {}
        self._compactor: KVCompactor | None = None

    @classmethod
    def of(cls, runner: Any) -> RunnerCompression | None:
        """The runner's state, created on first use; ``None`` for models without beacons."""
        state = runner.__dict__.get("_breadcrumbs", False)
        if state is False:
            model = BeaconModel.from_model_config(runner.model_config)
            state = cls(runner, model) if model is not None else None
            runner.__dict__["_breadcrumbs"] = state
        return state

    def compression(self, req_id: str) -> RequestCompression | None:
        return self._requests.get(req_id)

    def _track_requests(self, scheduler_output: Any) -> None:
        """Register new compressed requests and forget finished ones (from the step's output)."""
        for req_id in scheduler_output.finished_req_ids:
            self._requests.pop(req_id, None)
        for new in scheduler_output.scheduled_new_reqs:
            comp = self.beacon_model.compression(len(new.prompt_token_ids), new.sampling_params)
            if comp is not None:
                self._requests[new.req_id] = comp

    def _batch(self):
        """(batch index, request id, compression) of the compressed requests in the batch.

        Empty at once when no compressed request is live, so a beacon model serving only
        uncompressed requests pays nothing per request in the hooks.
        """
        if not self._requests:
            return
        batch = self.runner.input_batch
        for i, req_id in enumerate(batch.req_ids[: batch.num_reqs]):
            comp = self.compression(req_id)
            if comp is not None:
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
        block_size = self._block_table.block_size
        for i, req_id in enumerate(cached.req_ids):
            if req_id in cached.resumed_req_ids or req_id not in self.runner.requests:
                continue
            comp = self.compression(req_id)
            if comp is None:
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

    def _isa(self) -> str:
        """The CPU attention kernel variant, as vLLM set it on the attention layers."""
        from vllm.model_executor.layers.attention.attention import Attention

        for layer in self.runner.compilation_config.static_forward_context.values():
            if isinstance(layer, Attention) and hasattr(layer, "isa"):
                return layer.isa
        raise NotImplementedError("breadcrumbs: KV compaction supports vLLM's CPU attention only")

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
                self._compactor = KVCompactor(self.runner.kv_caches,
                                              self._block_table.block_size, self._isa())
            self._compactor.move(self._block_table.block_table.np[i],
                                 comp.schedule.physical_index(last),
                                 comp.schedule.beacon_home(last))
