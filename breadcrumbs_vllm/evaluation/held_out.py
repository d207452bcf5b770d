"""Held-out problems: evaluation problems that no checkpoint in a model's lineage trained on.

Problems are drawn from a seed, and with small difficulty knobs (Countdown with numbers up to 12)
the problem space is small enough that a training run draws many of the problems a fixed
evaluation seed draws. Every training step is a function of its recorded config, so the problems a
run trained on can be replayed exactly (``step_problems``); ``breadcrumbs eval --held-out-from``
skips those and draws on from the same seed until it has ``n`` unseen problems.
"""

from __future__ import annotations

import random
from pathlib import Path

from breadcrumbs_vllm.checkpoint import read_breadcrumbs_config
from breadcrumbs_vllm.tasks import Problem, Task, get_task
from breadcrumbs_vllm.training.config import TrainConfig
from breadcrumbs_vllm.training.trainer import CONFIG_FILE, step_problems

MAX_DRAWS_PER_PROBLEM = 100  # gives up when nearly every problem of the task was trained on


def training_prompts(model: Path | str) -> set[str]:
    """The prompts of every problem ``model`` trained on, and every checkpoint it started from.

    Follows ``init`` (a run continued from another checkpoint) and the teacher (a student's
    ``breadcrumbs.teacher``, else the one its config records). Assumes one training process, as
    on this machine; a multi-process run draws per-rank problems that are not replayed here.
    """
    prompts: set[str] = set()
    pending, visited = [Path(model).resolve()], set()
    while pending:
        folder = pending.pop()
        if folder in visited:
            continue
        visited.add(folder)
        config_file = folder / CONFIG_FILE
        if not config_file.is_file():
            raise ValueError(f"{folder} has no {CONFIG_FILE}: cannot tell which problems it "
                             "trained on (--held-out needs checkpoints written by "
                             "`breadcrumbs train`)")
        cfg = TrainConfig.from_json(config_file.read_text())
        task = get_task(cfg.task, **cfg.task_options)
        for step in range(cfg.total_steps):
            prompts.update(p.prompt for p in step_problems(cfg, task, step))
        bc = read_breadcrumbs_config(folder)
        teacher = bc.teacher or cfg.teacher
        # Links are recorded relative to the checkpoint, so a lineage moved together stays
        # resolvable (the bundled models link to their stages' records in docs/results/stages/).
        pending += [(folder / origin).resolve() for origin in (cfg.init, teacher) if origin]
    return prompts


def unseen_problems(task: Task, n: int, seed: int, seen: set[str]) -> tuple[list[Problem], int]:
    """The first ``n`` problems of ``seed`` whose prompt is not in ``seen``, and how many were
    skipped.

    The same draws as ``task.problems(n, seed)`` with the seen ones left out, so the held-out set
    is as reproducible as the plain one.
    """
    rng = random.Random(seed)
    problems: list[Problem] = []
    skipped = 0
    while len(problems) < n:
        if skipped > MAX_DRAWS_PER_PROBLEM * n:
            raise ValueError(f"fewer than {n} problems of this task are unseen in training")
        problem = task.generate(rng)
        if problem.prompt in seen:
            skipped += 1
        else:
            problems.append(problem)
    return problems, skipped

