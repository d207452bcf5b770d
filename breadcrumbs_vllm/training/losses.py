"""The three training objectives, on the outputs of one (masked) forward pass.

All three take per-position logits and a ``labels`` tensor from
:func:`breadcrumbs_vllm.training.mask.build_beacon_batch`, where ``-100`` marks prompt, padding
and beacon positions (rule 6: the loss ignores beacons).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from breadcrumbs_vllm.training.mask import IGNORE_INDEX


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the generated part (supervised warm start)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``log p(label)`` at every position (0 where the label is ignored)."""
    safe = labels.clamp(min=0)
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, safe[..., None])[..., 0]
    return logp * (labels != IGNORE_INDEX)


def group_advantages(rewards: torch.Tensor, group: int) -> torch.Tensor:
    """GRPO: each reward minus its group's mean, over the group's std (0 when all agree)."""
    r = rewards.view(-1, group)
    adv = (r - r.mean(dim=1, keepdim=True)) / (r.std(dim=1, keepdim=True) + 1e-4)
    return adv.flatten()


def grpo_loss(logits: torch.Tensor, labels: torch.Tensor, old_logprobs: torch.Tensor,
              advantages: torch.Tensor, clip: float) -> torch.Tensor:
    """PPO-clipped policy gradient with one advantage per sequence, averaged over tokens.

    ``old_logprobs`` are the sampling policy's (computed once per rollout batch); the clipped
    ratio stops any one batch from moving the policy far, the guard against collapse.
    """
    valid = labels != IGNORE_INDEX
    logp = token_logprobs(logits, labels)
    ratio = torch.exp(logp - old_logprobs)
    adv = advantages[:, None]
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
    return -(surrogate * valid).sum() / valid.sum().clamp(min=1)


def distill_kl(student_logits: torch.Tensor, student_labels: torch.Tensor,
               teacher_logits: torch.Tensor, teacher_labels: torch.Tensor) -> torch.Tensor:
    """Mean KL(teacher || student) over every non-beacon position that predicts a token.

    The student's sequence has beacons inserted and the teacher's has not, but both predict the
    same generated tokens in the same order, so the valid positions of each align one to one.
    """
    s = student_logits[student_labels != IGNORE_INDEX].float()
    t = teacher_logits[teacher_labels != IGNORE_INDEX].float()
    if s.shape != t.shape:
        raise ValueError(f"student and teacher predict different token counts: {s.shape} vs {t.shape}")
    return F.kl_div(torch.log_softmax(s, -1), torch.log_softmax(t, -1), log_target=True,
                    reduction="batchmean")
