"""Countdown: reach a target from given numbers with + - * /.

Rules: each number is used at most once, every intermediate result is an integer (division only
when exact). The solver is a depth-first search whose trace records every operation it tries and
every dead end, so most of a trace is reasoning that stops mattering once its branch fails: the
kind of text beacons are meant to compress.

Trace format (one operation per line, the numbers left after it in brackets)::

    Use 19 9 15 16 to make 21 with + - * /, each at most once.     (the prompt)
    15+9=24 [19 16 24]
    24-16=8 [19 8]
    19+8=27 x                a last step that misses: dead end
    back [19 16 24]          every branch below failed; the search resumes from this state
    19+16=35 [24 35]
    35-24=11 x
    back [19 16 24]
    24-19=5 [16 5]
    16+5=21                  the target: the search stops
    Answer: 16+(15+9-19)

With ``restate_path`` a ``back`` line also restates the steps of the path to the state it
returns to (``back 15+9=24 [19 16 24]``). Everything the answer line needs is then written after
the last ``back`` line: a model whose older tokens are compressed into beacons copies the path
from a few lines up instead of recalling lines from the start of the trace.

Order and pruning: candidate steps are tried closest-to-target first, at most ``breadth`` of them
per state (a beam that keeps traces a few hundred characters long; the generator only keeps
problems this search solves). Among the final steps of a branch (two numbers left) only the
closest is written: if it misses, all the others miss too. Steps that give 0 or give back one of
their operands (x*1, x/1) are skipped: leaving a number unused does the same.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from itertools import combinations

from breadcrumbs_vllm.tasks.base import ANSWER_PREFIX, Problem, Task

_STEP = re.compile(r"([0-9]{1,9})([-+*/])([0-9]{1,9})=(-?[0-9]{1,9})(.*)")
_STATE = re.compile(r"\[([0-9]{1,9}( [0-9]{1,9})*)\]")
_BACK = re.compile(r"back((?: [0-9]{1,9}[-+*/][0-9]{1,9}=[0-9]{1,9})*) (\[.*\])")

_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


def apply_op(a: int, op: str, b: int) -> int | None:
    """``a op b`` under the Countdown rules; ``None`` when the division is not exact."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a // b if b != 0 and a % b == 0 else None


@dataclass(frozen=True)
class _Item:
    """A number available to the search and the expression that produced it."""

    value: int
    expr: str
    prec: int = 3  # literals bind tightest
    step: str = ""  # the operation that made it, as the trace writes it: "7*3"

    @staticmethod
    def combine(a: _Item, op: str, b: _Item, value: int) -> _Item:
        """The item for ``a op b``, parenthesising only where precedence requires it.

        The right operand is also wrapped at equal precedence: ``a-(b-c)`` and ``a*(b/c)`` are
        not ``a-b-c`` and ``a*b/c`` under left-to-right integer evaluation.
        """
        prec = _PRECEDENCE[op]
        left = f"({a.expr})" if a.prec < prec else a.expr
        right = f"({b.expr})" if b.prec <= prec else b.expr
        return _Item(value, f"{left}{op}{right}", prec, f"{a.value}{op}{b.value}")


def _state(items: list[_Item]) -> str:
    return "[" + " ".join(str(i.value) for i in items) + "]"


class Countdown(Task):
    """Countdown: ``count`` numbers drawn from ``[low, high]``, a target in ``target_range``."""

    name = "countdown"
    MAX_ATTEMPTS = 10_000  # knobs no problem satisfies (e.g. a target range out of reach) fail

    def __init__(self, count: int = 4, low: int = 1, high: int = 25,
                 target_range: tuple[int, int] = (10, 99), breadth: int = 3,
                 min_backtracks: int = 1, restate_path: bool = False) -> None:
        if (count < 2 or not 1 <= low <= high or not 1 <= target_range[0] <= target_range[1]
                or breadth < 1 or min_backtracks < 0):
            raise ValueError("countdown needs count >= 2, 1 <= low <= high, a positive target "
                             "range, breadth >= 1 and min_backtracks >= 0")
        self.count = count
        self.low = low
        self.high = high
        self.target_range = target_range
        self.breadth = breadth
        self.min_backtracks = min_backtracks
        self.restate_path = restate_path

    def generate(self, rng: random.Random) -> Problem:
        """A target built from the numbers, kept only if this solver's search solves it.

        Problems that the search solves on its first path, without backtracking, teach no search;
        ``min_backtracks`` drops them (0 keeps them).
        """
        lo, hi = self.target_range
        for _ in range(self.MAX_ATTEMPTS):
            numbers = [rng.randint(self.low, self.high) for _ in range(self.count)]
            target = self._random_result(numbers, rng)
            if target is None or not lo <= target <= hi or target in numbers:
                continue
            lines = self._trace(numbers, target)
            if (lines is not None
                    and sum(ln.startswith("back") for ln in lines) >= self.min_backtracks):
                prompt = (f"Use {' '.join(map(str, numbers))} to make {target} with + - * /, "
                          "each at most once.")
                return Problem(self.name, prompt, {"numbers": numbers, "target": target})
        raise ValueError(f"no countdown problem fits these knobs in {self.MAX_ATTEMPTS} draws")

    @staticmethod
    def _random_result(numbers: list[int], rng: random.Random) -> int | None:
        """Combine all numbers in a random order with random legal operations."""
        pool = list(numbers)
        while len(pool) > 1:
            a, b = sorted((pool.pop(rng.randrange(len(pool))), pool.pop(rng.randrange(len(pool)))),
                          reverse=True)
            results = [r for op in "+-*/" if (r := apply_op(a, op, b)) is not None and r > 0]
            if not results:
                return None
            pool.append(rng.choice(results))
        return pool[0]

    def solve(self, problem: Problem) -> str:
        lines = self._trace(problem.data["numbers"], problem.data["target"])
        if lines is None:
            raise ValueError(f"this search does not solve: {problem.prompt}")
        return "\n".join(lines)

    def _trace(self, numbers: list[int], target: int) -> list[str] | None:
        """The full trace, ``Answer:`` line included; ``None`` if the search fails."""
        lines: list[str] = []
        found = self._search([_Item(n, str(n)) for n in numbers], target, lines, [])
        return None if found is None else [*lines, f"Answer: {found.expr}"]

    def _search(self, items: list[_Item], target: int, lines: list[str],
                path: list[str]) -> _Item | None:
        """Depth-first search from ``items``, appending trace lines; the item equal to ``target``.

        ``path`` holds the steps that led from the given numbers to ``items``.
        """
        for child, made in self._children(items, target)[:self.breadth]:
            step = f"{made.step}={made.value}"
            if made.value == target:
                lines.append(step)
                return made
            if len(child) == 1:  # the closest final step missed, so every other one does
                lines.append(f"{step} x")
                break
            lines.append(f"{step} {_state(child)}")
            found = self._search(child, target, lines, [*path, step])
            if found is not None:
                return found
            lines.append(self._back_line(path, _state(items)))
        return None

    def _back_line(self, path: list[str], state: str) -> str:
        """The line that returns the search to ``state``, reached by the steps in ``path``."""
        return " ".join(["back", *self._restated(path), state])

    def _restated(self, path: list[str]) -> list[str]:
        """The steps a ``back`` line writes before the state it returns to."""
        return path if self.restate_path else []

    @staticmethod
    def _children(items: list[_Item], target: int) -> list[tuple[list[_Item], _Item]]:
        """Every useful single step from ``items``, closest to ``target`` first, one per state."""
        seen: set[tuple[int, ...]] = set()
        out: list[tuple[int, list[_Item], _Item]] = []
        for i, j in combinations(range(len(items)), 2):
            a, b = sorted((items[i], items[j]), key=lambda it: it.value, reverse=True)
            rest = [it for k, it in enumerate(items) if k not in (i, j)]
            for op in "+-*/":
                value = apply_op(a.value, op, b.value)
                if value is None or value in (0, a.value, b.value):
                    continue
                made = _Item.combine(a, op, b, value)
                child = rest + [made]
                key = tuple(sorted(it.value for it in child))
                if key not in seen:
                    seen.add(key)
                    out.append((abs(value - target), child, made))
        out.sort(key=lambda t: t[0])
        return [(child, made) for _, child, made in out]

    def check_answer(self, problem: Problem, answer: str) -> bool:
        value = evaluate(answer, problem.data["numbers"])
        return value is not None and value == problem.data["target"]

    def diagnose(self, problem: Problem, completion: str) -> str:
        """The first faulty line of a failed trace, replayed against the search it describes.

        Categories: ``arithmetic`` (``a op b`` is not the value written), ``operand`` (a number
        not left in the current state), ``state`` (the bracket is not what is left), ``backtrack``
        (``back`` names no state on the current path, or not the steps that reached it),
        ``verdict`` (a step wrongly marked as hitting or missing the target), ``format`` (not a
        trace line), ``wrong answer`` (every step sound, the ``Answer:`` line not), ``no answer``.
        """
        if self.verify(problem, completion):
            return "correct"
        target = problem.data["target"]
        # Each open branch: the steps that reached the state it started from, and that state.
        path: list[tuple[list[str], list[int]]] = [([], sorted(problem.data["numbers"]))]
        for line in filter(None, (ln.strip() for ln in completion.split("\n"))):
            if line.startswith(ANSWER_PREFIX):
                return "wrong answer"
            if line.startswith("back"):
                back = _parse_back(line)
                if back is None:
                    return "format"
                path.pop()  # the branch that just failed
                while path and back != (self._restated(path[-1][0]), path[-1][1]):
                    path.pop()
                if not path:
                    return "backtrack"
                continue
            fault = _check_step(line, path, target)
            if fault is not None:
                return fault
        return "no answer"


def _parse_back(line: str) -> tuple[list[str], list[int]] | None:
    """``"back 15+9=24 [19 16 24]"`` -> ``(["15+9=24"], [16, 19, 24])``; ``None`` if malformed."""
    match = _BACK.fullmatch(line)
    state = None if match is None else _parse_state(match[2])
    return None if state is None else (match[1].split(), state)


def _parse_state(text: str) -> list[int] | None:
    """``"[19 16 24]"`` -> ``[16, 19, 24]`` (sorted, so states compare as multisets)."""
    match = _STATE.fullmatch(text)
    return None if match is None else sorted(int(n) for n in match.group(1).split())


def _check_step(line: str, path: list[tuple[list[str], list[int]]], target: int) -> str | None:
    """Check one operation line against the current state; push the state it opens."""
    match = _STEP.fullmatch(line)
    if match is None:
        return "format"
    a, op, b, value, rest = int(match[1]), match[2], int(match[3]), int(match[4]), match[5].strip()
    steps, current = path[-1]
    left = Counter(current)
    left[a] -= 1
    left[b] -= 1
    if min(left.values()) < 0:
        return "operand"
    if apply_op(a, op, b) != value:
        return "arithmetic"
    if rest == "":  # the trace claims the target
        return None if value == target else "verdict"
    if rest == "x":  # the trace claims a miss
        return None if value != target else "verdict"
    state = _parse_state(rest)
    if state is None:
        return "format"
    if state != sorted([*left.elements(), value]):
        return "state"
    path.append(([*steps, f"{a}{op}{b}={value}"], state))
    return None


class _Reject(Exception):
    """Internal: the expression breaks the grammar or the rules."""


class _Parser:
    """Recursive descent over ``expr := term (+|- term)*``, ``term := atom (*|/ atom)*``,
    ``atom := number | ( expr )``, evaluated left to right with Countdown's integer rules.

    Literals are checked against the available numbers as they are read, so no value can grow
    beyond what the given numbers allow; the length cap bounds the recursion depth.
    """

    MAX_CHARS = 100

    def __init__(self, text: str, numbers: list[int]) -> None:
        self.text = text
        self.pos = 0
        self.left = Counter(numbers)

    def parse(self) -> int:
        value = self._expr()
        if self.pos != len(self.text):
            raise _Reject
        return value

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _expr(self) -> int:
        value = self._term()
        while self._peek() in ("+", "-"):
            op = self.text[self.pos]
            self.pos += 1
            value = self._apply(value, op, self._term())
        return value

    def _term(self) -> int:
        value = self._atom()
        while self._peek() in ("*", "/"):
            op = self.text[self.pos]
            self.pos += 1
            value = self._apply(value, op, self._atom())
        return value

    def _atom(self) -> int:
        if self._peek() == "(":
            self.pos += 1
            value = self._expr()
            if self._peek() != ")":
                raise _Reject
            self.pos += 1
            return value
        start = self.pos
        while self._peek().isascii() and self._peek().isdigit():
            self.pos += 1
        digits = self.text[start:self.pos]
        # A literal is written as its number is: no leading zeros, no more digits than any has.
        if not 1 <= len(digits) <= 9 or str(int(digits)) != digits or not self.left[int(digits)]:
            raise _Reject
        self.left[int(digits)] -= 1
        return int(digits)

    @staticmethod
    def _apply(a: int, op: str, b: int) -> int:
        value = apply_op(a, op, b)
        if value is None:
            raise _Reject
        return value


def evaluate(expression: str, numbers: list[int]) -> int | None:
    """The value of a Countdown answer using each of ``numbers`` at most once, else ``None``.

    A hand-written parser rather than ``eval``: model output is untrusted, and the grammar has no
    room for exponents, names or unary signs. Spaces are ignored.
    """
    text = "".join(expression.split(" "))
    if len(text) > _Parser.MAX_CHARS:
        return None
    try:
        return _Parser(text, numbers).parse()
    except _Reject:
        return None
