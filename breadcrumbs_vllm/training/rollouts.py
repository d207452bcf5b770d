"""Rollouts sampled with vLLM in the training process: what makes RL and distillation affordable
at real model sizes (the reference engine decodes one token per forward, unbatched in memory).

:class:`VllmSampler` starts one offline ``vllm.LLM`` in-process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``, the uni-process executor) on the policy's checkpoint folder,
with an explicit KV pool so that it shares the device with training instead of claiming 90% of it. A
policy that trains (the joint teacher, an on-policy student) has its weights pushed into the engine
before each batch through vLLM's in-place weight reload (HF parameter names, vLLM fuses them), and
the prefix cache is dropped so no stale KV survives the update. The breadcrumbs plugin is active as
in serving, so on-policy student rollouts carry beacons at each request's ratio.

Seeds are per request (``base + i``), so a step's rollouts depend only on (run, step). They are
vLLM's sampler's draws, not the reference engine's: a run with ``--rollout-engine vllm`` is
reproducible against itself, not against a reference-engine run.

Several processes (``accelerate launch``, ``torchrun``): each process starts its own engine on
its own device through vLLM's ``external_launcher`` executor, which reads ``RANK`` and
``LOCAL_RANK`` from the launcher (the colocated layout TRL uses). Not verified on GPU hardware
here: this machine has one CPU process.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch


class VllmSampler:
    """One in-process vLLM engine sampling completions of token-id prompts."""

    def __init__(self, model_path: Path | str, max_model_len: int, kv_cache_gib: float,
                 seed: int, dtype: str = "auto") -> None:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        from vllm import LLM

        kwargs: dict = {"dtype": dtype}
        if not torch.cuda.is_available():
            # vLLM's CPU attention needs blocks of 32 or more; its bf16 path needs AVX512-BF16.
            kwargs = {"block_size": 32, "dtype": "float32", "enforce_eager": True}
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            kwargs["distributed_executor_backend"] = "external_launcher"
        self.llm = LLM(model=str(model_path), seed=seed, max_model_len=max_model_len,
                       kv_cache_memory_bytes=int(kv_cache_gib * 2**30),
                       enable_prefix_caching=True, **kwargs)

    def load_weights(self, model: torch.nn.Module) -> None:
        """Copy ``model``'s current weights into the engine (same architecture, HF names).

        Through the worker's ``reload_weights``, not the model's ``load_weights``: after the first
        load, backends repack weights into kernel layouts (the CPU one does), which only the
        reload path restores before loading again.
        """
        weights = [(k, v.detach()) for k, v in model.state_dict().items()]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.reset_prefix_cache()

    def sample(self, prompts: Sequence[list[int]], ratios: Sequence[int | None], max_tokens: int,
               temperature: float, seed: int) -> list[list[int]]:
        """Completions (token ids, beacons excluded) of each prompt at its ratio."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [SamplingParams(temperature=temperature, max_tokens=max_tokens, seed=seed + i,
                                 extra_args={"compression_ratio": ratio})
                  for i, ratio in enumerate(ratios)]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts],
                                 params, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]

    def close(self) -> None:
        self.llm.llm_engine.engine_core.shutdown()
