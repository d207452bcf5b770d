"""How close a student stays to its teacher, token by token, on traces it never trained on.

Accuracy says whether the answer survived compression; the per-token KL(teacher || student) on
the teacher's own greedy traces of held-out problems says how much of the teacher's next-token
distribution did, at every step of the reasoning. It is the quantity distillation minimises,
measured the same way (one forward pass under the rule-6 beacon mask, ``training/mask.py``),
so a held-out KL close to the training log's says the student generalised, not memorised.
"""

from __future__ import annotations

import torch

from breadcrumbs_vllm.evaluation.runner import chat_prompt_ids
from breadcrumbs_vllm.reference import GenerationRequest, ReferenceEngine
from breadcrumbs_vllm.tasks import Problem
from breadcrumbs_vllm.tokenizer import pad_token_id
from breadcrumbs_vllm.training.losses import distill_kl
from breadcrumbs_vllm.training.mask import build_beacon_batch


@torch.no_grad()
def held_out_kl(student: ReferenceEngine, teacher: ReferenceEngine, problems: list[Problem],
                ratios: list[int | None], max_tokens: int, batch_size: int = 16) -> dict:
    """Mean per-token KL(teacher || student) at each ratio, over the teacher's greedy traces of
    ``problems`` (its end-of-turn token included); ``None`` measures the student uncompressed."""
    prompts = [chat_prompt_ids(teacher, p) for p in problems]
    traces = [r.token_ids for r in teacher.generate(
        [GenerationRequest(p, max_tokens=max_tokens) for p in prompts])]
    beacon, pad = student.bc.beacon_token_id, pad_token_id(student.tokenizer)
    out = {}
    for ratio in ratios:
        total, tokens = 0.0, 0
        for i in range(0, len(prompts), batch_size):
            chunk = slice(i, i + batch_size)
            n = len(prompts[chunk])
            plain = build_beacon_batch(prompts[chunk], traces[chunk], [None] * n, beacon, pad)
            with_beacons = build_beacon_batch(prompts[chunk], traces[chunk], [ratio] * n,
                                              beacon, pad)
            reference = plain.gather(teacher.model(**plain.model_inputs()).logits)
            logits = with_beacons.gather(student.model(**with_beacons.model_inputs()).logits)
            total += distill_kl(logits, reference).item() * len(reference)
            tokens += len(reference)
        out["none" if ratio is None else ratio] = total / tokens
    return out
