"""A training run's settings, recorded in every checkpoint so that it can be resumed and audited."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

# The fields naming other checkpoints (the teacher, the one a run continues from).
LINKS = ("teacher", "init")


@dataclass
class TrainConfig:
    """Everything that determines a run. ``--resume`` continues the recorded config unchanged.

    Step counts are totals for the run: a teacher run does ``sft_steps`` supervised steps, then
    ``rl_steps`` GRPO steps; a student run does ``trace_steps`` distillation steps on solver traces,
    then ``rl_steps`` steps, each one a batch of teacher rollouts that the teacher learns from
    (joint mode only) and the student distils. The student's learning rate follows one warmup +
    cosine schedule over both phases.

    ``switch_share`` (rule 8, ratios that rise): the share of student sequences whose ratio path
    rises once instead of staying fixed, so one checkpoint also serves a request whose ratio the
    server raises mid-generation. Such a sequence starts at a ratio drawn from ``ratios`` less the
    largest, rises to one drawn from the larger ones, at a window boundary drawn uniformly from
    those its generated tokens reach (:class:`~breadcrumbs_vllm.training.trainer.Rise`).

    ``plain_share``: the share of student sequences (of those that do not rise) distilled with
    no beacons at all, as the teacher sees them. A student trained only at its ratios always
    finds old tokens inside beacons, and can unlearn reading them where nothing is compressed.
    """

    stage: str  # "teacher" or "student"
    task: str = "countdown"
    task_options: dict = field(default_factory=dict)  # difficulty knobs, e.g. {"high": 12}
    seed: int = 0
    # model (teacher from scratch)
    layers: int = 4
    hidden: int = 128
    # supervised warm start on solver traces
    sft_steps: int = 1500
    sft_batch: int = 32
    lr: float = 2e-3
    warmup: int = 50  # linear warmup steps before the cosine decay (teacher SFT, student run)
    # GRPO
    rl_steps: int = 0
    rl_problems: int = 8  # problems per step
    group: int = 8  # sampled completions per problem
    rl_lr: float = 1e-4
    temperature: float = 1.0
    clip: float = 0.2  # PPO-style ratio clipping: the guard against collapse
    kl_coef: float = 0.0  # weight of KL(policy || policy at the start of RL): the drift guard
    ppo_epochs: int = 2  # gradient steps per rollout batch (clipping is active from the second)
    max_tokens: int = 512
    # student
    teacher: str | None = None
    init: str | None = None  # start from this checkpoint (student: instead of the teacher)
    ratios: list[int] = field(default_factory=lambda: [2, 4, 8, 16])
    sequential: bool = False  # distil from the frozen, finished teacher instead of jointly
    on_policy: bool = False  # rollouts sampled from the student (with beacons), not the teacher
    switch_share: float = 0.0  # share of student sequences whose ratio rises once (rule 8)
    plain_share: float = 0.0  # share of student sequences distilled uncompressed
    distill_lr: float = 1e-3
    trace_steps: int = 0  # warm start: distil on solver traces (batch sft_batch) before rollouts
    trace_ce: float = 0.0  # warm start: weight of cross-entropy on the trace tokens next to the KL
    # compute: "bf16" runs forward passes under autocast (accelerate's mixed precision, the usual
    # choice on GPUs); weights and optimiser state stay float32
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False  # recompute activations in the backward (long rollouts)
    # LoRA adapters of this rank (0: full fine-tuning); a student's beacon row trains
    lora_rank: int = 0
    # a user's data instead of a built-in task (``breadcrumbs_vllm.data.DataSpec`` fields)
    data: dict | None = None
    keep_correct: bool = False  # distil only rollouts the verifier scores correct
    rollout_engine: str = "reference"  # or "vllm": an in-process vLLM engine samples rollouts
    rollout_kv_gib: float = 1.0  # that engine's KV pool
    # bookkeeping
    eval_every: int = 250
    eval_n: int = 32
    eval_seed: int = 4321  # periodic eval; `breadcrumbs eval` uses 1234; training never uses either
    save_every: int = 100

    def __post_init__(self) -> None:
        if not 0.0 <= self.switch_share <= 1.0:
            raise ValueError(f"--switch-share must be in [0, 1], got {self.switch_share}")
        if not 0.0 <= self.plain_share < 1.0:
            raise ValueError(f"--plain-share must be in [0, 1), got {self.plain_share}")
        if self.switch_share and len(set(self.ratios)) < 2:
            raise ValueError("--switch-share needs two or more --ratios (a ratio to rise to)")

    @property
    def total_steps(self) -> int:
        warm_start = self.sft_steps if self.stage == "teacher" else self.trace_steps
        return warm_start + self.rl_steps

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        return cls(**json.loads(text))

    def relative_to(self, folder: Path | str) -> TrainConfig:
        """The config as checkpoint ``folder`` records it: linked checkpoints relative to it.

        A run holds its links resolved; the record names them from the checkpoint, as
        ``config.json``'s ``breadcrumbs.teacher`` does, so a lineage moved together (into a
        repository, onto another machine) still resolves and names no machine's paths.
        """
        return replace(self, **{k: os.path.relpath(Path(v).resolve(), Path(folder).resolve())
                                for k in LINKS if (v := getattr(self, k))})

    def resolved_from(self, folder: Path | str) -> TrainConfig:
        """The inverse of ``relative_to``: links as paths a run can open (absolute ones kept)."""
        return replace(self, **{k: str((Path(folder) / v).resolve())
                                for k in LINKS if (v := getattr(self, k))})
