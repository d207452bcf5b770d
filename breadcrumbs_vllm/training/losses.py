"""The training objectives, on the predicting positions of one (masked) forward pass.

Every loss takes ``[N, V]`` logits gathered by :meth:`BeaconBatch.gather
<breadcrumbs_vllm.training.mask.BeaconBatch.gather>` and the ``[N]`` tokens they predict: prompt,
padding and beacon positions are already left out (rule 6: the loss ignores beacons).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sft_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the generated part (supervised warm start)."""
    return F.cross_entropy(logits.float(), targets)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log p(target)`` at every predicting position."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[:, None])[:, 0]


def group_advantages(rewards: torch.Tensor, group: int) -> torch.Tensor:
    """GRPO: each reward minus its group's mean, over the group's std (0 when all agree)."""
    r = rewards.view(-1, group)
    adv = (r - r.mean(dim=1, keepdim=True)) / (r.std(dim=1, keepdim=True) + 1e-4)
    return adv.flatten()


def grpo_loss(logits: torch.Tensor, targets: torch.Tensor, old_logprobs: torch.Tensor,
              advantages: torch.Tensor, clip: float) -> torch.Tensor:
    """PPO-clipped policy gradient, averaged over tokens.

    ``advantages`` holds each token's sequence's advantage; ``old_logprobs`` are the sampling
    policy's (computed once per rollout batch); the clipped ratio stops any one batch from moving
    the policy far, the guard against collapse.
    """
    ratio = torch.exp(token_logprobs(logits, targets) - old_logprobs)
    surrogate = torch.minimum(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)
    return -surrogate.mean()


def reference_kl(logits: torch.Tensor, reference_logits: torch.Tensor) -> torch.Tensor:
    """Mean KL(policy || reference) per position, exact over the (small) vocabulary.

    GRPO's penalty for drifting from the policy RL started from: the clip bounds each update
    against the sampling policy only, and many bounded updates in one direction still add up.
    It is :func:`distill_kl` with the roles swapped (the trained policy is the distribution the
    divergence is taken from; gradients flow through it all the same).
    """
    return distill_kl(reference_logits, logits)


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean KL(teacher || student) over every predicting position.

    The student's sequence has beacons inserted and the teacher's has not, but both predict the
    same generated tokens in the same order, so the gathered positions line up one to one.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError("student and teacher predict different token counts: "
                         f"{tuple(student_logits.shape)} vs {tuple(teacher_logits.shape)}")
    return F.kl_div(torch.log_softmax(student_logits.float(), -1),
                    torch.log_softmax(teacher_logits.float(), -1), log_target=True,
                    reduction="batchmean")
