"""One request through vLLM with the plugin, for ``breadcrumbs generate --engine vllm``."""

from __future__ import annotations

import os

from breadcrumbs_vllm.spec import BeaconSchedule


def kv_figures(prompt_len: int, ratio: int | None, num_generated: int) -> dict:
    """Peak/mean KV entries and beacons of a finished request, as the reference engine counts.

    The plugin's KV layout is fixed by ``BeaconSchedule`` (exactness is tested against the
    reference engine), so the per-request accounting follows from the schedule.
    """
    schedule = BeaconSchedule(prompt_len, ratio)
    fed = max(num_generated - 1, 0)  # the last sampled token is never fed
    trace = [prompt_len] + [schedule.kv_len_after_feeding(i)
                            for i in range(prompt_len, schedule.logical_len(fed))]
    return {"peak_kv_entries": max(trace), "mean_kv_entries": sum(trace) / len(trace),
            "num_beacons": schedule.num_beacons_fed(fed)}


def generate_with_vllm(model_path: str, prompt_ids: list[int], ratio: int | None, max_tokens: int,
                       greedy: bool, seed: int | None) -> dict:
    """Generate with an in-process vLLM engine (float32, like the reference engine)."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout is the answer
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=model_path, dtype="float32", seed=seed or 0, enable_prefix_caching=True,
              max_model_len=max(len(prompt_ids) + 2 * max_tokens + 1, 256))
    params = SamplingParams(temperature=0.0 if greedy else 1.0, seed=seed, max_tokens=max_tokens,
                            extra_args={"compression_ratio": ratio})
    out = llm.generate([TokensPrompt(prompt_token_ids=list(prompt_ids))], params,
                       use_tqdm=False)[0].outputs[0]
    token_ids = list(out.token_ids)
    return {"token_ids": token_ids, "text": out.text, "finish_reason": out.finish_reason,
            **kv_figures(len(prompt_ids), ratio, len(token_ids))}
