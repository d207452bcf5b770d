"""Verifiers for a user's data: ``exact``, ``math``, the built-in tasks, or a Python entry point.

A verifier is written the way the task interface is (``breadcrumbs_vllm/tasks/base.py``): an
object with ``verify(problem, completion) -> float`` (1.0 correct, 0.0 not; it never raises on
malformed model output) and optionally ``diagnose(problem, completion) -> str``. The problem is a
:class:`~breadcrumbs_vllm.tasks.base.Problem` whose ``data`` holds the row's ``answer`` (and, for a
built-in task, the fields its checker reads), so every built-in :class:`Task` already is one.

``--verifier`` resolves, in order: ``exact``, ``math``, a built-in task name, a name registered in
the ``breadcrumbs_vllm.verifiers`` entry-point group of an installed package, or
``package.module:attribute`` (a class is instantiated without arguments).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, Protocol

from breadcrumbs_vllm.tasks.base import ANSWER_PREFIX, MAX_ANSWER_CHARS, Problem

ENTRY_POINT_GROUP = "breadcrumbs_vllm.verifiers"

BOXED = "\\boxed{"


class Verifier(Protocol):
    def verify(self, problem: Problem, completion: str) -> float: ...


def final_answer_text(text: str) -> str:
    """The final answer a text states: after the last ``####``, else the last ``Answer:`` line,
    else the last ``\\boxed{...}``, else the whole text; stripped, trailing period dropped."""
    for marker in ("####", ANSWER_PREFIX):
        _, found, rest = text.rpartition(marker)
        if found:
            return rest.split("\n", 1)[0].strip().rstrip(".")
    boxed = _last_boxed(text)
    return (text if boxed is None else boxed).strip().rstrip(".")


def _last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}``, nested braces included (``\\frac{1}{2}``)."""
    start = text.rfind(BOXED)
    if start < 0:
        return None
    depth, begin = 1, start + len(BOXED)
    for i in range(begin, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[begin:i]
    return None


class ExactMatch:
    """The completion's final answer equals the reference's final answer, whitespace-normalised
    (numbers also compare as numbers: ``1,000`` and ``1000.0`` equal ``1000``)."""

    name = "exact"

    def verify(self, problem: Problem, completion: str) -> float:
        got = _normalise(final_answer_text(completion))
        want = _normalise(final_answer_text(str(problem.data["answer"])))
        return 1.0 if got and len(got) <= MAX_ANSWER_CHARS and got == want else 0.0


def _normalise(answer: str) -> str:
    text = " ".join(answer.split()).lstrip("$")
    number = text.replace(",", "")
    try:
        value = float(number)
    except ValueError:
        return text
    return str(int(value)) if value.is_integer() else str(value)


class MathEquivalence:
    """Mathematical equivalence of the final answers, decided by the ``math-verify`` library
    (LaTeX and plain expressions, ``1/2`` equals ``0.5``), never by hand-written rules."""

    name = "math"

    def verify(self, problem: Problem, completion: str) -> float:
        from math_verify import parse, verify

        gold = parse(f"${final_answer_text(str(problem.data['answer']))}$")
        answer = final_answer_text(completion)
        if not gold or len(answer) > MAX_ANSWER_CHARS:
            return 0.0
        try:
            return 1.0 if verify(gold, parse(f"${answer}$")) else 0.0
        except Exception:  # noqa: BLE001 -- a reward never raises on model output
            return 0.0


BUILT_IN: dict[str, type] = {"exact": ExactMatch, "math": MathEquivalence}


def get_verifier(spec: str) -> Any:
    """Resolve ``--verifier`` (see the module docstring); one-line ``ValueError`` otherwise."""
    from breadcrumbs_vllm.tasks import TASKS

    if spec in BUILT_IN:
        return BUILT_IN[spec]()
    if spec in TASKS:
        return TASKS[spec]()
    registered = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if spec in registered:
        return _instance(registered[spec].load(), spec)
    module_name, sep, attribute = spec.partition(":")
    if not sep:
        raise ValueError(f"unknown verifier {spec!r}: use exact, math, a task "
                         f"({', '.join(sorted(TASKS))}), an entry point of group "
                         f"{ENTRY_POINT_GROUP!r} or package.module:attribute")
    try:
        target = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"verifier {spec!r} cannot be loaded: {exc}") from None
    return _instance(target, spec)


def _instance(target: Any, spec: str) -> Any:
    verifier = target() if isinstance(target, type) else target
    if not callable(getattr(verifier, "verify", None)):
        raise ValueError(f"verifier {spec!r} has no verify(problem, completion) method")  # noqa: TRY004
    return verifier
