"""Task families by name: the CLI and the training pipeline look tasks up here."""

from __future__ import annotations

import inspect
import json
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


def parse_task_options(items: list[str] | None) -> dict[str, Any]:
    """``["high=12", "target_range=[10,60]"]`` as knobs: values are JSON where they parse as it.

    The knobs are recorded in a checkpoint's ``breadcrumbs`` block (``task_options``), so training,
    evaluation and the student all draw problems from the same distribution.
    """
    options: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--task-option {item!r}: expected KEY=VALUE, e.g. high=12")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


__all__ = ["TASKS", "Problem", "Task", "final_answer", "get_task", "parse_task_options"]
