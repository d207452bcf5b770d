"""Task families by name: the CLI and the training pipeline look tasks up here."""

from __future__ import annotations

import inspect
from typing import Any

from breadcrumbs_vllm.tasks.base import Problem, Task, final_answer
from breadcrumbs_vllm.tasks.countdown import Countdown
from breadcrumbs_vllm.tasks.linsys import LinSys
from breadcrumbs_vllm.tasks.stargraph import StarGraph

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (Countdown, LinSys, StarGraph)}


def get_task(name: str, **knobs: Any) -> Task:
    """A task instance with its difficulty knobs.

    Unknown names and knobs raise ``ValueError`` (the CLI prints those as one-line errors).
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
    try:
        inspect.signature(TASKS[name]).bind(**knobs)
    except TypeError as err:
        raise ValueError(f"{name}: {err}") from None
    return TASKS[name](**knobs)


__all__ = ["TASKS", "Problem", "Task", "final_answer", "get_task"]
