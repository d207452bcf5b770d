"""The task interface: a seeded problem generator, a solver that writes a trace, a verifier.

Every task family (Countdown, LinSys, StarGraph) implements :class:`Task`. The training pipeline
learns from ``solve`` traces, RL rewards come from ``verify``, and ``breadcrumbs eval`` scores
held-out problems with it.

Verification is split in two so that the rule every task shares lives in one place: ``verify``
finds the final ``Answer:`` line (the only part of a completion that is scored) and each task's
``check_answer`` judges that line. Rewards feed RL on arbitrary model output, so both halves are
total functions: malformed text scores 0.0, it never raises.
"""

from __future__ import annotations

import random
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

ANSWER_PREFIX = "Answer:"

# No task's answer line comes near this; a longer one is malformed, and the cap keeps every
# checker's work small whatever a model emits.
MAX_ANSWER_CHARS = 200

# ASCII digits only: ``\d`` and ``int()`` also accept other scripts' digits, which no trace uses.
# Nine digits bound every value a checker compares, so no huge-int conversion ever happens.
_INT = re.compile(r"[+-]?[0-9]{1,9}")


@dataclass(frozen=True)
class Problem:
    """One problem instance: the user-visible prompt plus whatever the verifier needs.

    ``data`` holds only JSON types, so problem sets can be written to disk and shared.
    """

    task: str
    prompt: str
    data: dict[str, Any] = field(default_factory=dict)


class Task(ABC):
    """A task family with difficulty knobs set at construction time."""

    name: str = ""

    @abstractmethod
    def generate(self, rng: random.Random) -> Problem:
        """Draw one problem; the same ``rng`` state always gives the same problem."""

    @abstractmethod
    def solve(self, problem: Problem) -> str:
        """A step-by-step reasoning trace whose last line is ``Answer: ...``."""

    @abstractmethod
    def check_answer(self, problem: Problem, answer: str) -> bool:
        """Whether ``answer`` (the text of the final ``Answer:`` line) is correct; never raises."""

    def verify(self, problem: Problem, completion: str) -> float:
        """1.0 for a correct final answer, 0.0 otherwise; never raises on malformed output."""
        answer = final_answer(completion)
        return 1.0 if answer is not None and self.check_answer(problem, answer) else 0.0

    def diagnose(self, problem: Problem, completion: str) -> str:
        """Why a completion failed, as a short category (``"correct"`` when it did not fail).

        Accuracy says how often a compressed model fails; the categories say where it loses the
        thread. This base version only tells a missing answer from a wrong one; tasks whose
        traces can be checked line by line override it to name the first faulty step.
        """
        if self.verify(problem, completion):
            return "correct"
        return "no answer" if final_answer(completion) is None else "wrong answer"

    def problems(self, n: int, seed: int) -> list[Problem]:
        """``n`` problems from a fixed seed (held-out sets use a seed the training never uses)."""
        rng = random.Random(seed)
        return [self.generate(rng) for _ in range(n)]


def final_answer(completion: str) -> str | None:
    """The rest of the line after the last ``Answer:``, stripped.

    ``None`` when there is no ``Answer:`` or the line is longer than :data:`MAX_ANSWER_CHARS`.
    Only the last one counts, so a model cannot hedge with several answers.
    """
    _, prefix, rest = completion.rpartition(ANSWER_PREFIX)
    if not prefix:
        return None
    line = rest.split("\n", 1)[0].strip()
    return line if len(line) <= MAX_ANSWER_CHARS else None


def parse_int(text: str) -> int | None:
    """An optionally signed ASCII integer of at most nine digits (surrounding spaces allowed)."""
    match = _INT.fullmatch(text.strip())
    return int(match.group()) if match else None


def parse_int_list(text: str, sep: str = ",") -> list[int] | None:
    """``"3, 17,8"`` -> ``[3, 17, 8]``; ``None`` if any item is not an integer."""
    values = [parse_int(item) for item in text.split(sep)]
    return None if any(v is None for v in values) else values  # type: ignore[return-value]
