"""KV compaction in CUDA memory with vLLM's real GPU kernels, no engine (needs a CUDA GPU).

``tests/test_plugin_layouts.py`` checks every layout on CPU tensors with a rendering of the CUDA
cache writer; this runs the same compaction on a GPU against the real kernels, as the GPU run's
second stage (``loadtests/gpu_run.sh``):

* caches built on the GPU by vLLM's own view builder (``create_kv_cache_views``) in each of the
  six ``KVCacheLayout``s, bf16 and fp8, written by TRITON_ATTN's real ``do_kv_cache_update``
  (vLLM's Triton cache writer); ``KVCompactor`` (probe, pinned staging, ``non_blocking`` copy)
  must leave every byte as if the moved tokens had been written at their destinations;
* vLLM's Triton paged attention (``unified_attention``) over the compacted cache, with the
  physical length and the block table, equals dense attention over the kept tokens;
* a CUDA graph of that attention, captured over persistent ``seqused_k`` and block-table
  buffers, replayed after a compaction and an in-place rewrite of both, equals eager.

Skipped without CUDA (the reason is printed with ``-rs``).
"""

from __future__ import annotations

import functools
import math
import random
from types import SimpleNamespace

import pytest
import torch

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA GPU: run loadtests/gpu_run.sh there (docs/plugin.md)")

NUM_LAYERS, NUM_BLOCKS, BLOCK_SIZE, NUM_HEADS, HEAD_SIZE = 2, 8, 32, 2, 64
FP8_SCALE = 0.5


class GpuCache:
    """One KV-cache tensor of ``NUM_LAYERS`` layers on the GPU, as ``allocate_kv_cache`` builds
    it, with TRITON_ATTN's own cache write bound to a layer."""

    def __init__(self, layout, kv_cache_dtype: str) -> None:
        from vllm.platforms import current_platform
        from vllm.v1.attention.backend import AttentionType
        from vllm.v1.attention.backends.triton_attn import TritonAttentionImpl
        from vllm.v1.kv_cache_interface import (
            FullAttentionSpec,
            KVCacheTensor,
            compute_layout_strides,
            create_kv_cache_views,
        )

        self.quantized = kv_cache_dtype != "auto"
        dtype = torch.uint8 if self.quantized else torch.bfloat16
        spec = FullAttentionSpec(block_size=BLOCK_SIZE, num_kv_heads=NUM_HEADS,
                                 head_size=HEAD_SIZE, dtype=dtype)
        strides = compute_layout_strides(spec, NUM_BLOCKS, NUM_LAYERS, layout)
        size = NUM_LAYERS * NUM_BLOCKS * spec.page_size_bytes
        tensor = KVCacheTensor(size=size, layers=[f"l{i}" for i in range(NUM_LAYERS)],
                               layer_stride=strides[0], block_stride=strides[1])
        self.raw = torch.zeros(size, dtype=torch.int8, device="cuda")
        self.views = create_kv_cache_views(self.raw, spec, NUM_BLOCKS, layout, tensor, None)
        scale = torch.tensor(FP8_SCALE, device="cuda")
        self.layer = SimpleNamespace(_k_scale=scale, _v_scale=scale, _k_scale_float=FP8_SCALE,
                                     _v_scale_float=FP8_SCALE)
        self.fp8_dtype = current_platform.fp8_dtype()
        impl = SimpleNamespace(attn_type=AttentionType.DECODER, head_size=HEAD_SIZE,
                               kv_cache_dtype=kv_cache_dtype, fp8_dtype=self.fp8_dtype,
                               _is_per_token_head_quant=False)
        self.write = functools.partial(TritonAttentionImpl.do_kv_cache_update, impl, self.layer)

    def put(self, keys, values, slots: list[int]) -> None:
        slot_mapping = torch.tensor(slots, device="cuda")
        for view, k, v in zip(self.views, keys, values):
            self.write(k, v, view, slot_mapping)

    def group(self):
        from breadcrumbs_vllm.vllm_plugin.kv_layout import AttentionCaches

        return AttentionCaches(self.views, self.write, NUM_HEADS, HEAD_SIZE, HEAD_SIZE,
                               torch.bfloat16, self.quantized)

    def compactor(self):
        from breadcrumbs_vllm.vllm_plugin.kv_layout import KVCompactor

        return KVCompactor([self.group()], BLOCK_SIZE)

    def split(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """TRITON_ATTN's ``[B, N, H, D]`` K and V views of one layer (its ``forward``)."""
        k, v = self.views[layer].transpose(1, 2).split(HEAD_SIZE, dim=-1)
        return (k.view(self.fp8_dtype), v.view(self.fp8_dtype)) if self.quantized else (k, v)


def tokens(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shape = (NUM_LAYERS, count, NUM_HEADS, HEAD_SIZE)
    return (torch.randn(shape, generator=gen).to("cuda", torch.bfloat16),
            torch.randn(shape, generator=gen).to("cuda", torch.bfloat16))


def block_row(seed: int) -> list[int]:
    return random.Random(seed).sample(range(NUM_BLOCKS), NUM_BLOCKS)


def slots_of(row: list[int], positions) -> list[int]:
    return [row[i // BLOCK_SIZE] * BLOCK_SIZE + i % BLOCK_SIZE for i in positions]


def layouts():
    from vllm.v1.kv_cache_layout import KVCacheLayout

    return list(KVCacheLayout)


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "fp8"])
def test_compaction_with_the_triton_writer_in_every_layout(kv_cache_dtype):
    """Seven moves in one flush; the whole buffer must equal writes at the destinations."""
    from breadcrumbs_vllm.vllm_plugin.kv_layout import CellFootprint, FootprintProbe

    for layout in layouts():
        cache, expected = GpuCache(layout, kv_cache_dtype), GpuCache(layout, kv_cache_dtype)
        assert isinstance(FootprintProbe(cache.group()).footprint(), CellFootprint)
        compactor = cache.compactor()
        row = block_row(0)
        rng = random.Random(1)
        picked = rng.sample(range(NUM_BLOCKS * BLOCK_SIZE), 14)
        src, dst = picked[:7], picked[7:]
        keys, values = tokens(NUM_BLOCKS * BLOCK_SIZE, seed=2)
        every = slots_of(row, range(NUM_BLOCKS * BLOCK_SIZE))
        cache.put(keys, values, every)
        expected.put(keys, values, every)
        for s, d in zip(src, dst):
            compactor.move(row, s, d)
        compactor.flush()
        expected.put(keys[:, src], values[:, src], [every[d] for d in dst])
        torch.cuda.synchronize()
        assert cache.raw.any(), layout
        assert torch.equal(cache.raw, expected.raw), f"{layout.name} {kv_cache_dtype}"


def compacted_request(cache: GpuCache, length: int, keep: list[int], seed: int):
    """``length`` tokens written at their logical positions, then the ``keep`` ones compacted to
    the front in order (each move's destination already emptied: sources never overwritten)."""
    row = block_row(seed)
    keys, values = tokens(length, seed)
    cache.put(keys, values, slots_of(row, range(length)))
    compactor = cache.compactor()
    for i, position in enumerate(keep):
        if position != i:
            compactor.move(row, position, i)
            compactor.flush()
    return row, keys[:, keep], values[:, keep]


def paged_attention(cache: GpuCache, query, out, seqused_k, block_table, max_len: int) -> None:
    from vllm.v1.attention.ops.triton_unified_attention import unified_attention

    k_cache, v_cache = cache.split(0)
    scale = cache.layer._k_scale.reshape(1, 1).expand(1, NUM_HEADS) if cache.quantized else None
    unified_attention(q=query, k=k_cache, v=v_cache, out=out,
                      cu_seqlens_q=torch.tensor([0, 1], dtype=torch.int32, device="cuda"),
                      max_seqlen_q=1, seqused_k=seqused_k, max_seqlen_k=max_len,
                      softmax_scale=1 / math.sqrt(HEAD_SIZE), causal=True, window_size=(-1, -1),
                      block_table=block_table, softcap=0, q_descale=None, k_descale=scale,
                      v_descale=scale)


def dense_attention(query, keys, values) -> torch.Tensor:
    """One decode query over the kept tokens: ``[1, H, D]``."""
    q = query.float().transpose(0, 1)  # [H, 1, D]
    k, v = keys.float().transpose(0, 1), values.float().transpose(0, 1)  # [H, T, D]
    return torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(0, 1)


def test_paged_attention_over_a_compacted_cache_equals_dense_attention():
    from vllm.v1.kv_cache_layout import KVCacheLayout

    cache = GpuCache(KVCacheLayout.LBNHC, "auto")
    length = 5 * BLOCK_SIZE + 7
    keep = list(range(40)) + list(range(48, length, 4))  # a prompt, then every 4th token
    row, keys, values = compacted_request(cache, length, keep, seed=3)
    query = torch.randn(1, NUM_HEADS, HEAD_SIZE, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(query)
    block_table = torch.tensor([row], dtype=torch.int32, device="cuda")
    seqused_k = torch.tensor([len(keep)], dtype=torch.int32, device="cuda")
    paged_attention(cache, query, out, seqused_k, block_table, length)
    torch.testing.assert_close(out.float(), dense_attention(query, keys[0], values[0]),
                               atol=2e-2, rtol=2e-2)


def test_cuda_graph_replay_after_an_in_place_rewrite_equals_eager():
    """The graph reads ``seqused_k`` and the block table from persistent buffers, as vLLM's FULL
    graphs do; the plugin rewrites them in place after compacting."""
    from vllm.v1.kv_cache_layout import KVCacheLayout

    cache = GpuCache(KVCacheLayout.LBNHC, "auto")
    length = 4 * BLOCK_SIZE
    row, _, _ = compacted_request(cache, length, list(range(length)), seed=4)
    query = torch.randn(1, NUM_HEADS, HEAD_SIZE, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(query)
    block_table = torch.tensor([row], dtype=torch.int32, device="cuda")
    seqused_k = torch.tensor([length], dtype=torch.int32, device="cuda")
    paged_attention(cache, query, out, seqused_k, block_table, NUM_BLOCKS * BLOCK_SIZE)  # JIT
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        paged_attention(cache, query, out, seqused_k, block_table, NUM_BLOCKS * BLOCK_SIZE)
    keep = list(range(20)) + list(range(24, length, 8))
    compactor = cache.compactor()
    for i, position in enumerate(keep):
        if position != i:
            compactor.move(row, position, i)
            compactor.flush()
    new_row = row[::-1]  # the same blocks, listed in another order: move the data with them
    cache_copy = [view.clone() for view in cache.views]
    for view, copy in zip(cache.views, cache_copy):
        view[torch.tensor(new_row, device="cuda")] = copy[torch.tensor(row, device="cuda")]
    block_table.copy_(torch.tensor([new_row], dtype=torch.int32))
    seqused_k.fill_(len(keep))
    graph.replay()
    eager = torch.empty_like(out)
    paged_attention(cache, query, eager, seqused_k, block_table, NUM_BLOCKS * BLOCK_SIZE)
    torch.cuda.synchronize()
    assert torch.equal(out, eager)
