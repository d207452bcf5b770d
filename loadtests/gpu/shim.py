"""Stand-in for vLLM's ``_C_stable_libtorch`` CUDA extension, for the GPU pack's runs only.

``loadtests/gpu/pack.py unpack`` installs this file as ``vllm/_C_stable_libtorch.py`` in the pack's
vLLM tree; nothing else imports it. ``vllm/platforms/cuda.py`` imports that module unconditionally,
so these ops exist as soon as the CUDA platform loads. The real extension is built for torch 2.13
and is not carried (``pack.py``). Only the ops the pack's runs reach are registered: the engine runs
TRITON_ATTN or FLEX_ATTENTION with ``custom_ops=["none"]``, native RMSNorm and no torch.compile
(``loadtests/gpu_check.py --no-compile``), greedy sampling. Any other ``_C`` op fails loudly with
"no such operator"; none is silently approximated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_C = torch.library.Library("_C", "FRAGMENT")
_CACHE_OPS = torch.library.Library("_C_cache_ops", "FRAGMENT")
_KERNEL = "CompositeExplicitAutograd"  # one Python kernel for every device


# Reached: ``vllm/utils/torch_utils.py:weak_ref_tensor``, called by ``compilation/cuda_graph.py``
# and ``compilation/breakable_cudagraph.py`` on each captured graph's outputs, so the graph memory
# pool can reuse them for the next capture. The twin returns an alias of the same storage: every
# read sees the same bytes; the only difference is that the alias keeps that memory allocated
# (a little more memory per captured size, never a different value).
_C.define("weak_ref_tensor(Tensor(a) input) -> Tensor(a)")
_C.impl("weak_ref_tensor", lambda input: torch.ops.aten.alias(input), _KERNEL)


# Reached: ``SiluAndMul.__init__`` (``model_executor/layers/activation.py``) looks the op up on
# CUDA even when ``custom_ops=["none"]`` makes ``forward_native`` run, so it must exist. The twin
# is ``forward_native``'s own formula, so a call through ``forward_cuda`` would compute the same.
def _silu_and_mul(result: torch.Tensor, input: torch.Tensor) -> None:
    d = input.shape[-1] // 2
    result.copy_(F.silu(input[..., :d]) * input[..., d:])


_C.define("silu_and_mul(Tensor! result, Tensor input) -> ()")
_C.impl("silu_and_mul", _silu_and_mul, _KERNEL)


# Reached: at import of ``model_executor/layers/quantization/utils/w8a8_utils.py``. False is the
# truth here: there is no CUTLASS kernel in this build, so block-fp8 GEMMs must not pick one (the
# pack's models are not fp8-quantized and never reach such a GEMM).
_C.define("cutlass_scaled_mm_supports_block_fp8(int cuda_device_capability) -> bool")
_C.impl("cutlass_scaled_mm_supports_block_fp8", lambda capability: False, _KERNEL)


# Reached: ``FlexAttentionImpl.do_kv_cache_update`` (``v1/attention/backends/flex_attention.py``)
# writes the KV cache through this op. The twin is vLLM's own Triton port with the same signature,
# ``triton_reshape_and_cache_flash``, which TRITON_ATTN itself calls on CUDA: like the CUDA kernel
# it writes token t to ``[slot // N, slot % N]`` of the split ``[B, N, H, D]`` views through their
# strides, skips padding slots (< 0) and stores fp8 as ``x / scale`` with the per-tensor scale.
# FlexAttention has no fp8 cache, so on this path it is a plain copy: the same bytes.
def _reshape_and_cache_flash(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                             value_cache: torch.Tensor, slot_mapping: torch.Tensor,
                             kv_cache_dtype: str, k_scale: torch.Tensor,
                             v_scale: torch.Tensor) -> None:
    # imported here: this module loads while vllm.platforms.cuda is still importing
    from vllm.v1.attention.ops.triton_reshape_and_cache_flash import (
        triton_reshape_and_cache_flash,
    )

    triton_reshape_and_cache_flash(key, value, key_cache, value_cache, slot_mapping,
                                   kv_cache_dtype, k_scale, v_scale)


_CACHE_OPS.define(
    "reshape_and_cache_flash(Tensor key, Tensor value, Tensor! key_cache, Tensor! value_cache, "
    "Tensor slot_mapping, str kv_cache_dtype, Tensor k_scale, Tensor v_scale) -> ()")
_CACHE_OPS.impl("reshape_and_cache_flash", _reshape_and_cache_flash, _KERNEL)
