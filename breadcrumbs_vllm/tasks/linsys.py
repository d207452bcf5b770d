"""LinSys: a small integer linear system with a unique integer solution.

This is the task where, per the paper, compression hurts most: exact intermediate values must
survive until back-substitution reads them. The solver does fraction-free Gaussian elimination
(every derived equation is divided by the gcd of its numbers, so they stay small), then
back-substitution, one line per step::

    Solve for x,y,z. E1: -x+3y+2z=-7, E2: x-y+2z=-17, E3: 4y-2z=32     (the prompt)
    E4=(E2+E1)/2: y+2z=-12         eliminate x from E2 with pivot E1, divide by the common 2
    E5=(E3-4E4)/10: -z=8           eliminate y from E3 with pivot E4
    E5: -z=8, z=-8                 the last pivot gives the last unknown
    E4: y=-12-2*(-8)=4, y=4        known values move to the right-hand side, one term each
    E1: -x=-7-3*4-2*(-8)=-3, x=3
    Answer: x=3, y=4, z=-8

Pivots are the equations with the smallest non-zero coefficient of the unknown being eliminated.

With ``show_work=True`` an elimination line writes its arithmetic one operation a number, column by
column (``r`` is the right-hand side), before the equation it gives, then the division (one line,
wrapped here)::

    E4=E2+E1: x: 1*1+1*(-1)=1-1=0, y: 1*(-1)+1*3=-1+3=2, z: 1*2+1*2=2+2=4,
        r: 1*(-17)+1*(-7)=-17-7=-24, 2y+4z=-24, /2: y+2z=-12

Without it a 1M-parameter model trained from scratch learned the layout but not the new equation's
numbers, which it must compute in one step each (1.8 nats a digit after 2000 steps,
docs/results-log.md, "LinSys"); with it every number written is one product or one sum of numbers
already on the page, and the traces are about three times longer.

``show_work=2`` also copies the two coefficients an elimination cancels before it picks the
multipliers, which otherwise need both coefficients' signs recalled at one token::

    cancel x: E2 1, E1 -1, E4=E2+E1: x: 1*1+1*(-1)=1-1=0, ...

(with ``show_work=1`` the wrong sign there was 24 of 32 greedy failures after 1500 steps).
``show_work=3`` also writes a back-substitution's products before their sum
(``E1: x=-13+2*4-1*(-8)=-13+8+8=3, x=3``), where level 2's greedy failures were.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from math import gcd, lcm

from breadcrumbs_vllm.tasks.base import Problem, Task, final_answer, parse_int

VARIABLES = "xyz"

Equation = tuple[list[int], int]  # coefficients, right-hand side


def _term(coef: int, var: str, first: bool) -> str:
    """``coef*var`` as written in an equation or a combination: ``3x``, ``-y``, ``+2E1``."""
    mag = "" if abs(coef) == 1 else str(abs(coef))
    sign = "-" if coef < 0 else ("" if first else "+")
    return f"{sign}{mag}{var}"


def format_equation(coefs: list[int], rhs: int, names: str) -> str:
    """``[2, -1, 0], 5`` -> ``2x-y=5`` (zero terms are left out)."""
    terms = [(c, v) for c, v in zip(coefs, names) if c]
    return "".join(_term(c, v, i == 0) for i, (c, v) in enumerate(terms)) + f"={rhs}"


class LinSys(Task):
    """``unknowns`` unknowns, coefficients in ``[-coef_max, coef_max]``, solution in
    ``[-value_max, value_max]``."""

    name = "linsys"

    def __init__(self, unknowns: int = 3, coef_max: int = 5, value_max: int = 9,
                 show_work: int = 0) -> None:
        if not 2 <= unknowns <= len(VARIABLES) or coef_max < 1 or value_max < 0:
            raise ValueError(f"linsys needs 2..{len(VARIABLES)} unknowns, coef_max >= 1 and "
                             "value_max >= 0")
        if show_work not in (0, 1, 2, 3):
            raise ValueError(f"linsys show_work is 0 to 3 (false, true), not {show_work!r}")
        self.unknowns = unknowns
        self.coef_max = coef_max
        self.value_max = value_max
        self.show_work = int(show_work)  # 0 to 3 (true is 1)

    def generate(self, rng: random.Random) -> Problem:
        """Random solution, random non-singular matrix; the right-hand sides follow."""
        n = self.unknowns
        solution = [rng.randint(-self.value_max, self.value_max) for _ in range(n)]
        while True:
            matrix = [[rng.randint(-self.coef_max, self.coef_max) for _ in range(n)]
                      for _ in range(n)]
            if _determinant(matrix) != 0:
                break
        rhs = [sum(c * v for c, v in zip(row, solution)) for row in matrix]
        names = VARIABLES[:n]
        eqs = ", ".join(f"E{i + 1}: {format_equation(row, b, names)}"
                        for i, (row, b) in enumerate(zip(matrix, rhs)))
        prompt = f"Solve for {','.join(names)}. {eqs}"
        return Problem(self.name, prompt, {"matrix": matrix, "rhs": rhs})

    def solve(self, problem: Problem) -> str:
        matrix, rhs = problem.data["matrix"], problem.data["rhs"]
        names = VARIABLES[:len(matrix)]
        equations: dict[str, Equation] = {f"E{i + 1}": (list(row), b)
                                          for i, (row, b) in enumerate(zip(matrix, rhs))}
        lines: list[str] = []
        pivots: list[str] = []
        active = list(equations)
        for col in range(len(names)):
            pivot = min((label for label in active if equations[label][0][col]),
                        key=lambda label: abs(equations[label][0][col]))
            pivots.append(pivot)
            active.remove(pivot)
            for k, label in enumerate(active):
                if equations[label][0][col] == 0:
                    continue
                new = f"E{len(equations) + 1}"
                step = _eliminate(equations[label], equations[pivot], col)
                equations[new] = step.result
                line = f"{new}={step.text(label, pivot, names, self.show_work > 0)}"
                if self.show_work >= 2:
                    line = (f"cancel {names[col]}: {label} {equations[label][0][col]}, "
                            f"{pivot} {equations[pivot][0][col]}, {line}")
                lines.append(line)
                active[k] = new
        values: dict[int, int] = {}
        for col in reversed(range(len(names))):
            label = pivots[col]
            coefs, b = equations[label]
            known = [k for k in sorted(values) if coefs[k]]
            moved = "".join(f"{-coefs[k]:+d}*{_paren(values[k])}" for k in known)
            if moved and self.show_work >= 3:
                moved += f"={b}" + "".join(f"{-coefs[k] * values[k]:+d}" for k in known)
            total = b - sum(coefs[k] * values[k] for k in values)
            values[col] = total // coefs[col]
            lhs = _term(coefs[col], names[col], True)
            rhs_text = f"{b}{moved}={total}" if moved else f"{b}"
            lines.append(f"{label}: {lhs}={rhs_text}, {names[col]}={values[col]}")
        lines.append("Answer: " + ", ".join(f"{v}={values[i]}" for i, v in enumerate(names)))
        return "\n".join(lines)

    def check_answer(self, problem: Problem, answer: str) -> bool:
        """Accepts ``x=1, y=-2, z=3`` in any order and spacing; each unknown exactly once.

        The values are checked by substitution: the system is non-singular, so only the solution
        satisfies every equation.
        """
        names = VARIABLES[:len(problem.data["matrix"])]
        values: dict[str, int] = {}
        for part in answer.split(","):
            name, eq, value_text = part.partition("=")
            name, value = name.strip(), parse_int(value_text)
            if not eq or name not in names or name in values or value is None:
                return False
            values[name] = value
        if len(values) != len(names):
            return False
        x = [values[v] for v in names]
        return all(sum(c * v for c, v in zip(row, x)) == b
                   for row, b in zip(problem.data["matrix"], problem.data["rhs"]))


    def diagnose(self, problem: Problem, completion: str) -> str:
        """The first line that differs from the solver's trace, and what in it differs.

        The solver is deterministic and the models are trained on its traces, so the first
        divergence is where a failed trace went wrong: ``elimination: multipliers`` (the
        combination picked), ``elimination: operand`` (a coefficient copied wrongly),
        ``elimination: arithmetic`` (a product or sum with ``show_work``), ``elimination:
        equation`` (the new equation or its division), ``back-substitution``, ``format`` (the line
        has another shape), ``wrong answer`` (every line right but the answer), ``no answer``.
        """
        if self.verify(problem, completion):
            return "correct"
        solver = self.solve(problem).split("\n")
        written = [line.strip() for line in completion.split("\n") if line.strip()]
        for got, want in zip(written, solver):
            if got == want:
                continue
            if want.startswith("Answer"):
                return "wrong answer"
            if not (want.startswith("cancel") or want.split(":")[0].count("=")):
                return "back-substitution"
            got_parts, want_parts = _elimination_parts(got), _elimination_parts(want)
            if [k for k, _ in got_parts] != [k for k, _ in want_parts]:
                return "format"
            return "elimination: " + next(k for (k, g), (_, w) in zip(got_parts, want_parts)
                                          if g != w)
        return "no answer" if final_answer(completion) is None else "wrong answer"


def _elimination_parts(line: str) -> list[tuple[str, str]]:
    """An elimination line as ``(kind, text)`` pieces, in order, for :meth:`LinSys.diagnose`."""
    parts: list[tuple[str, str]] = []
    cancel = re.match(r"cancel [xyz]: [^,]*, [^,]*, ", line)
    if cancel:
        parts.append(("operand", cancel.group()))
        line = line[cancel.end():]
    head, _, rest = line.partition(": ")
    parts.append(("multipliers", head))
    for segment in rest.split(", "):
        column = re.fullmatch(r"[xyzr]: ([^=]*)=([^=]*)=(.*)", segment)
        if column:
            parts += [("operand", column[1]), ("arithmetic", column[2]), ("arithmetic", column[3])]
        else:
            parts.append(("equation", segment))
    return parts


def _paren(value: int) -> str:
    return f"({value})" if value < 0 else str(value)


@dataclass(frozen=True)
class Elimination:
    """``(a*target - b*pivot) / divisor``, which cancels one column of ``target``."""

    target: Equation
    pivot: Equation
    a: int
    b: int
    divisor: int
    result: Equation

    def text(self, target_label: str, pivot_label: str, names: str, show_work: bool) -> str:
        """The trace line after ``E4=``: ``(3E3+E1)/2: y+2z=-12``, or with ``show_work`` the
        combination, each column's products and sum, the equation and the division."""
        how = _term(self.a, target_label, True) + _term(-self.b, pivot_label, False)
        result = format_equation(*self.result, names)
        if not show_work:
            return (f"({how})/{self.divisor}" if self.divisor > 1 else how) + f": {result}"
        columns = [*zip(names, self.target[0], self.pivot[0]),
                   ("r", self.target[1], self.pivot[1])]
        work = ", ".join(f"{name}: {self.a}*{_paren(t)}{-self.b:+d}*{_paren(p)}="
                         f"{self.a * t}{-self.b * p:+d}={self.a * t - self.b * p}"
                         for name, t, p in columns)
        undivided = format_equation([c * self.divisor for c in self.result[0]],
                                    self.result[1] * self.divisor, names)
        divided = f", /{self.divisor}: {result}" if self.divisor > 1 else ""
        return f"{how}: {work}, {undivided}{divided}"


def _eliminate(target: Equation, pivot: Equation, col: int) -> Elimination:
    """``a*target - b*pivot`` with column ``col`` cancelled (``a > 0``), divided by the common
    factor of its numbers."""
    t, p = target[0][col], pivot[0][col]
    m = lcm(abs(t), abs(p))
    a, b = m // t, m // p
    if a < 0:
        a, b = -a, -b
    coefs = [a * ct - b * cp for ct, cp in zip(target[0], pivot[0])]
    rhs = a * target[1] - b * pivot[1]
    g = gcd(*coefs, rhs)
    return Elimination(target, pivot, a, b, g, ([c // g for c in coefs], rhs // g))


def _determinant(m: list[list[int]]) -> int:
    """Exact determinant by cofactor expansion (the matrices are at most 3x3)."""
    if len(m) == 1:
        return m[0][0]
    return sum((-1) ** j * m[0][j] * _determinant([row[:j] + row[j + 1:] for row in m[1:]])
               for j in range(len(m)))
