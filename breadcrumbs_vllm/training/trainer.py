"""The training loop: teacher (SFT warm start, then GRPO) and the beacon student (distillation).

Read top to bottom: :class:`Run` owns the models, optimisers, step counter and checkpointing;
``teacher_sft_step``, ``rollout_step`` and ``student_step`` are the three kinds of step.

* Teacher: ``sft_steps`` of cross-entropy on solver traces, then ``rl_steps`` of GRPO: for
  ``rl_problems`` problems, ``group`` completions are sampled; the verifier's rewards become
  group-relative advantages; a PPO-clipped surrogate over ``ppo_epochs`` gradient steps updates
  the policy, plus ``kl_coef`` x KL(policy || the policy RL started from) against drift.
* Student: initialised from the teacher with the beacon embedding set to the mean embedding
  (or from ``init``, a warm-started student). ``trace_steps`` warm-start steps distil the
  teacher's logits on solver traces (plus ``trace_ce`` x cross-entropy on the traces); then each
  step samples a rollout batch from the teacher; in joint mode the teacher takes its GRPO
  step on it, and the student always minimises KL(teacher || student) on the same sequences
  under the rule-6 beacon mask, with the ratio drawn per sequence from ``ratios``; with
  ``switch_share`` a share of the sequences take a ratio path that rises once (rule 8,
  :class:`Rise`) and are masked along it. ``sequential``
  keeps the teacher frozen (distillation from a finished teacher), for the ablation.
  ``on_policy`` (with ``sequential``) samples the rollouts from the student instead, with beacons
  at the ratios its step then trains on: the teacher labels the states the student's own decoding
  reaches, mistakes included, which traces and teacher samples never show it.
* A user's model and data (``data``): the teacher is a ``breadcrumbs convert`` folder, problems
  are rows of a data file scored by a verifier (:class:`~breadcrumbs_vllm.data.DataTask`), and
  ``keep_correct`` distils only the rollouts the verifier accepts. ``rollout_engine="vllm"``
  samples rollouts with an in-process vLLM engine (:mod:`~breadcrumbs_vllm.training.rollouts`);
  ``lora_rank`` trains the student through LoRA adapters plus its beacon embedding row (and a
  teacher fine-tuned from a converted model, ``init`` with ``data``, through LoRA adapters).

Every step is a pure function of (config, step): problems, sampling seeds and ratios derive from
the seed and the step number, so ``--resume`` continues exactly where a run stopped. Checkpoints
are HF folders (loadable by vLLM unchanged) with ``training_config.json``, ``training_log.jsonl``
and ``trainer_state.pt`` inside, written atomically.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from breadcrumbs_vllm.checkpoint import (
    atomic_write_dir,
    init_model,
    load_checkpoint,
    save_checkpoint,
)
from breadcrumbs_vllm.data import DataSpec, DataTask
from breadcrumbs_vllm.evaluation.runner import Evaluator, chat_prompt_ids
from breadcrumbs_vllm.reference import GenerationRequest, ReferenceEngine
from breadcrumbs_vllm.spec import RatioPath
from breadcrumbs_vllm.tasks import Problem, Task, get_task
from breadcrumbs_vllm.tokenizer import build_tokenizer, load_tokenizer, pad_token_id
from breadcrumbs_vllm.training.config import TrainConfig
from breadcrumbs_vllm.training.losses import (
    distill_kl,
    group_advantages,
    grpo_loss,
    reference_kl,
    sft_loss,
    token_logprobs,
)
from breadcrumbs_vllm.training.mask import BeaconBatch, build_beacon_batch
from breadcrumbs_vllm.training.rollouts import VllmSampler

STATE_FILE = "trainer_state.pt"
CONFIG_FILE = "training_config.json"
LOG_FILE = "training_log.jsonl"


def step_seed(cfg: TrainConfig, step: int, stream: int, rank: int = 0) -> int:
    """A seed for (run, step, purpose, process): what makes every step reproducible."""
    return (cfg.seed * 1_000_003 + step * 7_919 + stream * 104_729 + rank * 15_485_863) % 2**31


def step_problems(cfg: TrainConfig, task: Task, step: int, rank: int = 0) -> list[Problem]:
    """The problems step ``step`` of a run draws: solver traces during the warm start (teacher
    SFT, student trace steps), rollout prompts after it.

    The trainer draws through this function and ``breadcrumbs eval --held-out-from`` replays it to
    learn every problem a checkpoint trained on, so the two cannot disagree.
    """
    warm_start = cfg.sft_steps if cfg.stage == "teacher" else cfg.trace_steps
    if step < warm_start:
        stream = 0 if cfg.stage == "teacher" else 4
        return task.problems(cfg.sft_batch, step_seed(cfg, step, stream, rank))
    return task.problems(cfg.rl_problems, step_seed(cfg, step, 1, rank))


@dataclass(frozen=True)
class Rise:
    """One sequence's drawn rise (``switch_share``, spec rule 8): from ``start`` to ``higher``.

    ``at`` in ``[0, 1)`` picks the boundary once the sequence's length is known: distillation
    learns the switch where the sequence has one, and the same draw serves any length.
    """

    start: int
    higher: int
    at: float

    def switches(self, generated_len: int) -> RatioPath:
        """The switch at one of the boundaries ``start, 2 * start, ...`` that a generated token
        follows (``t < generated_len``: a switch at the last token would change nothing), each
        equally likely; none when the sequence is too short to have one."""
        boundaries = (generated_len - 1) // self.start
        if boundaries < 1:
            return ()
        return ((self.start * (1 + int(self.at * boundaries)), self.higher),)


def step_rises(cfg: TrainConfig, step: int, n: int, rank: int = 0) -> list[Rise | None]:
    """Which of step ``step``'s ``n`` student sequences rise (each with probability
    ``switch_share``), and how. A stream of its own, so runs without switches draw as before."""
    if not cfg.switch_share:
        return [None] * n
    rng = random.Random(step_seed(cfg, step, 5, rank))
    ratios = sorted(set(cfg.ratios))
    rises: list[Rise | None] = []
    for _ in range(n):
        start = rng.choice(ratios[:-1])
        rise = Rise(start, rng.choice([r for r in ratios if r > start]), rng.random())
        rises.append(rise if rng.random() < cfg.switch_share else None)
    return rises


def solver_batch(engine: ReferenceEngine, task: Task,
                 problems: list[Problem]) -> tuple[list[list[int]], list[list[int]]]:
    """Prompt ids (chat turns) and solver-trace ids as the model must generate them: the
    trace's characters, then end of turn."""
    tokenizer = engine.tokenizer
    return ([chat_prompt_ids(engine, p) for p in problems],
            [tokenizer(task.solve(p), add_special_tokens=False)["input_ids"]
             + [tokenizer.eos_token_id] for p in problems])


@dataclass
class Rollouts:
    """A batch of sampled completions with rewards, and the teacher's logits on them."""

    prompts: list[list[int]]
    generations: list[list[int]]
    rewards: torch.Tensor  # [B]
    #: [N, V] the teacher's logits at every generated position, sequence after sequence
    #: (:meth:`BeaconBatch.gather`), computed without beacons.
    teacher_logits: torch.Tensor

    def correct_only(self) -> Rollouts:
        """The rollouts with a positive reward (``--keep-correct``), logits cut to match."""
        keep = [bool(r > 0) for r in self.rewards]
        chunks = self.teacher_logits.split([len(g) for g in self.generations])
        logits = [c for c, k in zip(chunks, keep) if k]
        return Rollouts([p for p, k in zip(self.prompts, keep) if k],
                        [g for g, k in zip(self.generations, keep) if k], self.rewards[keep],
                        torch.cat(logits) if logits else self.teacher_logits[:0])


class Run:
    """One training run: models, optimisers, the step counter, checkpoints and the log."""

    def __init__(self, cfg: TrainConfig, out: Path, teacher_out: Path | None = None) -> None:
        self.cfg = cfg
        self.out = out
        self.teacher_out = teacher_out
        self.acc = Accelerator(cpu=not torch.cuda.is_available(),
                               mixed_precision=cfg.mixed_precision)
        self.task = (DataTask(DataSpec(**cfg.data)) if cfg.data
                     else get_task(cfg.task, **cfg.task_options))
        self.step = 0
        self.log: list[dict] = []
        self.reference = None  # frozen copy of the teacher when RL starts (--kl-coef > 0)
        self.sampler: VllmSampler | None = None  # started by the first vLLM rollout batch
        # A user's model brings its own tokenizer. Otherwise the project tokenizer; a
        # checkpoint's loaded tokenizer gives the same ids (tests/test_tokenizer.py), so what is
        # trained is what vLLM serves.
        self.tokenizer = load_tokenizer(cfg.teacher or cfg.init) if cfg.data else build_tokenizer()
        resume = (out / STATE_FILE).is_file()
        if cfg.stage == "teacher":
            self._init_teacher(resume)
        else:
            self._init_student(resume)
        if resume:
            self._load_state()

    # --- models ------------------------------------------------------------------------------
    def _init_teacher(self, resume: bool) -> None:
        cfg = self.cfg
        if resume and not cfg.lora_rank:  # LoRA resumes its adapters on the base (_load_state)
            model, _, self.bc = load_checkpoint(self.out, attn_implementation="sdpa")
        elif cfg.init is not None:  # more GRPO on a finished teacher, or a user's converted model
            model, _, self.bc = load_checkpoint(cfg.init, attn_implementation="sdpa")
            self.bc.task_options = dict(cfg.task_options)  # --task-option may move the curriculum
        else:
            model, _, self.bc = init_model(cfg.layers, cfg.hidden, seed=cfg.seed,
                                           ratios=cfg.ratios, task=cfg.task,
                                           task_options=cfg.task_options)
        if cfg.lora_rank:
            model = with_lora(model, cfg.lora_rank, self.bc.beacon_token_id)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable({"use_reentrant": False})
        self.teacher = self.acc.prepare(model.train())
        self.teacher_opt = self.acc.prepare(torch.optim.AdamW(self.teacher.parameters(), lr=cfg.lr,
                                                              weight_decay=0.0))
        self.student = self.student_opt = None

    def _init_student(self, resume: bool) -> None:
        cfg = self.cfg
        if cfg.teacher is None:
            raise ValueError("the student needs --teacher PATH")
        teacher, _, self.bc = load_checkpoint(cfg.teacher, attn_implementation="sdpa")
        if resume and not cfg.lora_rank:  # LoRA resumes its adapters on the base (_load_state)
            student, _, _ = load_checkpoint(self.out, attn_implementation="sdpa")
        elif cfg.init is not None:  # e.g. a warm-started student, shared by the ablation's two arms
            student, _, _ = load_checkpoint(cfg.init, attn_implementation="sdpa")
        else:
            student, _, _ = load_checkpoint(cfg.teacher, attn_implementation="sdpa")
            if cfg.data is None:  # `breadcrumbs convert` initialised a user model's beacon row
                init_beacon_embedding(student, self.bc.beacon_token_id)
        if cfg.lora_rank:
            student = with_lora(student, cfg.lora_rank, self.bc.beacon_token_id)
        if cfg.gradient_checkpointing:
            for model in (teacher, student):
                model.gradient_checkpointing_enable({"use_reentrant": False})
        self.bc.ratios = sorted(cfg.ratios)
        self.bc.teacher = os.path.relpath(self.teacher_out or cfg.teacher, self.out)
        self.teacher = self.acc.prepare(teacher.train())
        self.teacher_opt = None
        if not cfg.sequential:
            self.teacher_opt = self.acc.prepare(
                torch.optim.AdamW(self.teacher.parameters(), lr=cfg.rl_lr, weight_decay=0.0))
        self.student = self.acc.prepare(student.train())
        self.student_opt = self.acc.prepare(
            torch.optim.AdamW(self.student.parameters(), lr=cfg.distill_lr, weight_decay=0.0))

    # --- the three kinds of step -------------------------------------------------------------
    def teacher_sft_step(self) -> dict:
        """Cross-entropy on a fresh batch of solver traces, learning rate warmup then cosine."""
        cfg = self.cfg
        prompts, targets = self.solver_traces()
        batch = self.batch(prompts, targets, [None] * len(prompts))
        set_lr(self.teacher_opt, cfg.lr * lr_factor(self.step, cfg.warmup, cfg.sft_steps))
        loss = sft_loss(self.predict(self.teacher, batch), batch.targets)
        self.update(self.teacher, self.teacher_opt, loss)
        return {"sft_loss": loss.item()}

    def rollout_step(self) -> tuple[dict, Rollouts]:
        """Sample ``group`` completions per problem; in teacher or joint mode, one GRPO update."""
        cfg = self.cfg
        rollouts = self.sample(step_problems(cfg, self.task, self.step, self.acc.process_index))
        metrics = {"reward": rollouts.rewards.mean().item(),
                   "gen_len": sum(map(len, rollouts.generations)) / len(rollouts.generations)}
        adv = group_advantages(rollouts.rewards, cfg.group)
        if cfg.kl_coef and self.reference is None and self.teacher_opt is not None:
            self.reference = frozen_copy(self.acc.unwrap_model(self.teacher))  # where RL starts
        # No group with mixed rewards means no signal; a zero loss would still let Adam's momentum
        # move the policy, so the update is skipped.
        if self.teacher_opt is not None and adv.abs().sum() > 0:
            set_lr(self.teacher_opt, cfg.rl_lr)
            batch = self.batch(rollouts.prompts, rollouts.generations,
                               [None] * len(rollouts.prompts))
            old = token_logprobs(rollouts.teacher_logits, batch.targets)
            adv = adv.to(old.device)[batch.owner]  # each token gets its sequence's advantage
            if self.reference is not None:
                with torch.no_grad():
                    reference_logits = self.predict(self.reference, batch)
            for _ in range(cfg.ppo_epochs):
                logits = self.predict(self.teacher, batch)
                loss = grpo_loss(logits, batch.targets, old, adv, cfg.clip)
                if self.reference is not None:
                    drift = reference_kl(logits, reference_logits)
                    loss = loss + cfg.kl_coef * drift
                    metrics["rl_kl"] = drift.item()
                self.update(self.teacher, self.teacher_opt, loss)
            metrics["rl_loss"] = loss.item()
        return metrics, rollouts

    def trace_rollouts(self) -> Rollouts:
        """Solver traces in place of sampled rollouts (the student's warm start, no reward).

        Distilling on the teacher's logits over traces it was trained on is one forward pass
        instead of ``max_tokens`` sampling steps, so the student first learns to use beacons
        cheaply; the joint phase on the teacher's own rollouts follows.
        """
        prompts, traces = self.solver_traces()
        batch = self.batch(prompts, traces, [None] * len(prompts))
        with torch.no_grad():
            logits = self.predict(self.teacher, batch)
        return Rollouts(prompts, traces, torch.ones(len(prompts)), logits)

    def student_step(self, rollouts: Rollouts, ce_weight: float = 0.0) -> dict:
        """KL(teacher || student) on the teacher's rollouts, each with its own sampled ratio path.

        ``ce_weight`` adds cross-entropy on the sequences' own tokens: on solver traces (the warm
        start) those are the correct reasoning, a sharper target than the teacher's soft one.
        """
        cfg = self.cfg
        batch = self.batch(rollouts.prompts, rollouts.generations,
                           self.step_ratios(len(rollouts.prompts)),
                           self.step_switches(rollouts.generations))
        set_lr(self.student_opt, cfg.distill_lr * lr_factor(self.step, cfg.warmup, cfg.total_steps))
        logits = self.predict(self.student, batch)
        kl = distill_kl(logits, rollouts.teacher_logits)
        metrics = {"kl": kl.item()}
        loss = kl
        if ce_weight:
            ce = sft_loss(logits, batch.targets)
            loss = kl + ce_weight * ce
            metrics["ce"] = ce.item()
        self.update(self.student, self.student_opt, loss)
        return metrics

    # --- helpers -----------------------------------------------------------------------------
    def step_ratios(self, n: int) -> list[int | None]:
        """The (start) ratio of each of this step's ``n`` student sequences: one draw per (run,
        step), so on-policy sampling and the distillation step that follows agree. ``None``
        (a ``plain_share`` of the sequences that do not rise): no beacons."""
        rng = random.Random(step_seed(self.cfg, self.step, 2, self.acc.process_index))
        fixed = [rng.choice(self.cfg.ratios) for _ in range(n)]
        # Drawn after the ratios, and only with a share, so runs without one keep their draws.
        plain = [rng.random() < self.cfg.plain_share if self.cfg.plain_share else False
                 for _ in range(n)]
        return [rise.start if rise is not None else None if bare else ratio
                for ratio, bare, rise in zip(fixed, plain, self.step_rises(n), strict=True)]

    def step_switches(self, generations: list[list[int]]) -> list[RatioPath]:
        """Where each sequence's ratio rises (``()``: it stays at its start ratio)."""
        return [() if rise is None else rise.switches(len(g))
                for rise, g in zip(self.step_rises(len(generations)), generations, strict=True)]

    def step_rises(self, n: int) -> list[Rise | None]:
        return step_rises(self.cfg, self.step, n, self.acc.process_index)

    def sample(self, problems: list[Problem]) -> Rollouts:
        """Completions (temperature ``cfg.temperature``), rewards, teacher logits.

        The teacher samples them; with ``on_policy`` the student does, with beacons at the ratios
        of :meth:`step_ratios`, and the rewards are the student's. A rising sequence is sampled at
        its start ratio: where it rises depends on its length, known only once it is sampled, so
        its tokens after the switch are the student's at the start ratio, not along the path.
        """
        cfg = self.cfg
        policy = self.student if cfg.on_policy else self.teacher
        engine = self.engine(policy)
        prompts = [chat_prompt_ids(engine, p) for p in problems for _ in range(cfg.group)]
        ratios = self.step_ratios(len(prompts)) if cfg.on_policy else [None] * len(prompts)
        base = step_seed(cfg, self.step, 3, self.acc.process_index)
        if cfg.rollout_engine == "vllm":
            generations = self.vllm_rollouts(policy, prompts, ratios, base)
        else:
            results = engine.generate([
                GenerationRequest(prompt, ratio=ratio, max_tokens=cfg.max_tokens,
                                  temperature=cfg.temperature, seed=base + i)
                for i, (prompt, ratio) in enumerate(zip(prompts, ratios))])
            policy.train()
            generations = [r.token_ids for r in results]
        rewards = torch.tensor([
            self.task.verify(p, self.tokenizer.decode(g, skip_special_tokens=True))
            for p, g in zip((p for p in problems for _ in range(cfg.group)), generations)])
        batch = self.batch(prompts, generations, [None] * len(prompts))
        with torch.no_grad():
            logits = self.predict(self.teacher, batch)
        return Rollouts(prompts, generations, rewards, logits)

    def vllm_rollouts(self, policy, prompts: list[list[int]], ratios: list[int | None],
                      seed: int) -> list[list[int]]:
        """Sample with the in-process vLLM engine; a policy that trains is synced first."""
        cfg = self.cfg
        if self.sampler is None:
            longest = max(len(p) for p in prompts)
            # every row's chat prompt must fit, not this batch's
            if isinstance(self.task, DataTask):
                longest = max(len(self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": row["prompt"]}], add_generation_prompt=True,
                    tokenize=True, return_dict=False)) for row in self.task.rows)
            # The teacher's folder: the frozen teacher itself, else an architecture that the
            # weights pushed below fill (a student has its teacher's shapes and vocabulary).
            self.sampler = VllmSampler(cfg.teacher, longest + 2 * cfg.max_tokens + 1,
                                       cfg.rollout_kv_gib, cfg.seed)
        if cfg.on_policy or not cfg.sequential:  # the sampling policy's weights move every step
            self.sampler.load_weights(self.acc.unwrap_model(policy))
        return self.sampler.sample(prompts, ratios, cfg.max_tokens, cfg.temperature, seed)

    def batch(self, prompts, generations, ratios,
              switches: list[RatioPath] | None = None) -> BeaconBatch:
        return build_beacon_batch(prompts, generations, ratios, self.bc.beacon_token_id,
                                  pad_token_id(self.tokenizer),
                                  switches=switches).to(self.acc.device)

    @staticmethod
    def predict(model, batch: BeaconBatch) -> torch.Tensor:
        """``[N, V]`` logits at the batch's predicting positions, sequence after sequence."""
        return batch.gather(model(**batch.model_inputs()).logits)

    def update(self, model, optimizer, loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        self.acc.backward(loss)
        self.acc.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    def engine(self, model) -> ReferenceEngine:
        return ReferenceEngine(self.acc.unwrap_model(model), self.tokenizer, self.bc)

    def solver_traces(self) -> tuple[list[list[int]], list[list[int]]]:
        """``sft_batch`` fresh problems of this step: prompt ids and solver-trace ids."""
        problems = step_problems(self.cfg, self.task, self.step, self.acc.process_index)
        return solver_batch(self.engine(self.teacher), self.task, problems)

    def evaluate(self) -> dict:
        """Greedy accuracy on a small eval set: the teacher uncompressed, the student per ratio."""
        cfg = self.cfg
        problems = self.task.problems(cfg.eval_n, cfg.eval_seed)
        if self.student is None:
            targets = [(self.teacher, None, "acc")]
        else:
            targets = [(self.student, r, f"acc_c{r}") for r in (min(cfg.ratios), max(cfg.ratios))]
        metrics = {}
        for model, ratio, name in targets:
            rows = Evaluator(self.engine(model), self.task, cfg.max_tokens, progress=False).run(
                problems, [ratio], [])
            metrics[name] = rows[0].accuracy
            metrics["eval_len"] = rows[0].mean_generated_tokens
            model.train()
        return metrics

    # --- the loop ----------------------------------------------------------------------------
    def train(self, max_minutes: float | None = None) -> bool:
        """Train until done or the time budget is spent; return whether the run is finished.

        ``max_minutes`` counts this call only. The log's ``time`` counts the whole run: a resumed
        run's clock goes on from the last step it logged, so the column reads as training time.
        """
        cfg = self.cfg
        start = time.time()
        logged_before = self.log[-1]["time"] if self.log else 0.0
        bar = tqdm(total=cfg.total_steps, initial=self.step, desc=f"train {cfg.stage}",
                   disable=not self.acc.is_main_process)
        shown: dict[str, float] = {}
        while self.step < cfg.total_steps:
            if max_minutes is not None and time.time() - start > max_minutes * 60:
                break
            if cfg.stage == "teacher" and self.step < cfg.sft_steps:
                metrics = self.teacher_sft_step()
            elif cfg.stage == "student" and self.step < cfg.trace_steps:
                metrics = self.student_step(self.trace_rollouts(), cfg.trace_ce)
            else:
                metrics, rollouts = self.rollout_step()
                if self.student is not None and cfg.keep_correct:
                    rollouts = rollouts.correct_only()
                    metrics["kept"] = len(rollouts.prompts)
                if self.student is not None and rollouts.prompts:
                    metrics.update(self.student_step(rollouts))
            self.step += 1
            if self.step % cfg.eval_every == 0 or self.step == cfg.total_steps:
                metrics.update(self.evaluate())
            clock = logged_before + time.time() - start
            self.log.append({"step": self.step, "time": round(clock, 2), **metrics})
            shown.update({k: round(v, 4) for k, v in metrics.items()})
            bar.set_postfix(shown, refresh=False)
            bar.update(1)
            if self.step % cfg.save_every == 0:
                self.save()
        bar.close()
        self.save()
        return self.step >= cfg.total_steps

    def close(self) -> None:
        """Shut the rollout engine down (its process-global parallel state goes with it)."""
        if self.sampler is not None:
            self.sampler.close()
            self.sampler = None

    # --- checkpoints -------------------------------------------------------------------------
    def save(self) -> None:
        """Write the trained model (and, in joint mode, the co-trained teacher) atomically."""
        if not self.acc.is_main_process:
            return
        state = {"step": self.step, "log": self.log,
                 "teacher_opt": self.teacher_opt.state_dict() if self.teacher_opt else None}
        if self.reference is not None:
            state["reference"] = self.reference.state_dict()
        if self.student is not None:
            state["student_opt"] = self.student_opt.state_dict()
            if self.teacher_opt is not None:  # joint: the teacher moves too
                state["teacher"] = self.acc.unwrap_model(self.teacher).state_dict()
        model = self.acc.unwrap_model(self.student if self.student is not None else self.teacher)
        if self.cfg.lora_rank:
            from peft import get_peft_model_state_dict

            state["lora"] = get_peft_model_state_dict(model)
            model = merged_copy(model)  # the checkpoint is a plain HF folder vLLM loads
        extra = {CONFIG_FILE: self.cfg.relative_to(self.out).to_json(),
                 LOG_FILE: "".join(json.dumps(row) + "\n" for row in self.log)}

        def write(tmp: Path) -> None:
            save_checkpoint(model, self.tokenizer, self.bc, tmp, extra_files=extra)
            torch.save(state, tmp / STATE_FILE)

        atomic_write_dir(self.out, write)
        if (self.teacher_out is not None and self.student is not None
                and self.teacher_opt is not None):
            teacher_bc = type(self.bc)(**{**self.bc.to_dict(), "teacher": None})
            save_checkpoint(self.acc.unwrap_model(self.teacher), self.tokenizer, teacher_bc,
                            self.teacher_out,
                            extra_files={CONFIG_FILE: self.cfg.relative_to(self.teacher_out)
                                         .to_json()})

    def _load_state(self) -> None:
        state = torch.load(self.out / STATE_FILE, weights_only=False)
        self.step, self.log = state["step"], state["log"]
        if state.get("teacher") is not None:
            self.acc.unwrap_model(self.teacher).load_state_dict(state["teacher"])
        if state.get("lora") is not None:
            from peft import set_peft_model_state_dict

            trained = self.student if self.student is not None else self.teacher
            set_peft_model_state_dict(self.acc.unwrap_model(trained), state["lora"])
        if state.get("reference") is not None:
            self.reference = frozen_copy(self.acc.unwrap_model(self.teacher))
            self.reference.load_state_dict(state["reference"])
        if self.teacher_opt is not None and state["teacher_opt"] is not None:
            self.teacher_opt.load_state_dict(state["teacher_opt"])
        if self.student_opt is not None:
            self.student_opt.load_state_dict(state["student_opt"])


def frozen_copy(model):
    """A gradient-free copy of ``model`` in eval mode, on its device (GRPO's KL reference)."""
    copy = type(model)(model.config).to(model.device)
    copy.load_state_dict(model.state_dict())
    return copy.eval().requires_grad_(False)


def with_lora(model, rank: int, beacon_id: int):
    """LoRA adapters (rank ``rank``, alpha ``2 * rank``) on every linear layer but the LM head,
    and the beacon's embedding row as a trainable token: the teacher never saw ``<beacon>``, so
    the row must learn whatever the adapters do."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank,
                                            target_modules="all-linear",
                                            trainable_token_indices=[beacon_id]))


def merged_copy(peft_model):
    """The adapted model as a plain transformers model (adapters and token rows merged), leaving
    the training model as it is."""
    import copy

    return copy.deepcopy(peft_model).merge_and_unload()


def init_beacon_embedding(model, beacon_id: int) -> None:
    """The teacher never saw ``<beacon>``: start its embedding at the mean of the others."""
    emb = model.get_input_embeddings().weight
    with torch.no_grad():
        others = torch.cat([emb[:beacon_id], emb[beacon_id + 1:]])
        emb[beacon_id] = others.mean(dim=0)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup, then cosine decay to 10% at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def load_config(out: Path) -> TrainConfig | None:
    """The config recorded in a run folder, if it holds a resumable run."""
    if (out / STATE_FILE).is_file() and (out / CONFIG_FILE).is_file():
        return TrainConfig.from_json((out / CONFIG_FILE).read_text()).resolved_from(out)
    return None
