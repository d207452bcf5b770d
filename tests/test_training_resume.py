"""A paused and resumed training run logs the same losses as an uninterrupted one (the claim in
docs/training.md): every step is a function of (seed, step), and ``trainer_state.pt`` carries the
optimiser state and the log across the pause. Its clock goes on too: the logged ``time`` of a
step is the same as in the uninterrupted run.

The pause is the one ``--max-minutes`` makes, at a chosen step: the trainer's clock is a fake that
advances a minute per step, so ``train(max_minutes=k - 0.5)`` stops after exactly ``k`` steps.
The run is a tiny teacher: SFT steps, then GRPO steps (sampled rollouts), paused inside each.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from breadcrumbs_vllm.training import trainer
from breadcrumbs_vllm.training.config import TrainConfig
from breadcrumbs_vllm.training.trainer import Run

CONFIG = TrainConfig(stage="teacher", sft_steps=3, rl_steps=2, sft_batch=4, rl_problems=2,
                     group=2, max_tokens=8, layers=1, hidden=64, eval_every=100, eval_n=2,
                     seed=0)


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    """The trainer's ``time.time``: a clock that advances 60 s at the start of every step."""
    now = [0.0]
    monkeypatch.setattr(trainer.time, "time", lambda: now[0])

    def ticking(method):
        def step(run):
            now[0] += 60.0
            return method(run)
        return step

    monkeypatch.setattr(Run, "teacher_sft_step", ticking(Run.teacher_sft_step))
    monkeypatch.setattr(Run, "rollout_step", ticking(Run.rollout_step))
    return now


@pytest.mark.parametrize("pause_after", [2, 4], ids=["paused-in-sft", "paused-in-rl"])
def test_a_resumed_run_logs_the_same_losses_as_an_uninterrupted_one(tmp_path: Path, clock,
                                                                     pause_after: int):
    whole = Run(CONFIG, tmp_path / "whole")
    assert whole.train()

    paused = Run(CONFIG, tmp_path / "paused")
    assert not paused.train(max_minutes=pause_after - 0.5)
    assert paused.step == pause_after
    del paused
    resumed = Run(CONFIG, tmp_path / "paused")  # reads trainer_state.pt
    assert resumed.step == pause_after
    assert resumed.train()

    assert len(whole.log) == CONFIG.total_steps
    assert resumed.log == whole.log  # the losses, and the clock that went on across the pause
