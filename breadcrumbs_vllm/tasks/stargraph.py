"""StarGraph: find the path from the centre of a star graph to a given leaf.

The graph is ``arms`` paths of ``length`` edges leaving one centre node, listed as shuffled
directed edges ``u>v``. Node ids are distinct random numbers, so nothing but the edges tells which
arm leads where. The solver explores arms depth first in the order the centre's edges appear in
the prompt, one line per arm; arms that end elsewhere are dead ends the rest of the trace never
needs again::

    14>3>40>9>27 x       this arm ends at 27, not the target: back to the centre
    14>22>5>31>8         reached the target
    Answer: 14,22,5,31,8

With ``letters=True`` every node is named by one letter (``a``..``z``, ``A``..``Z``), so a node is
one token, as in the original StarGraph, where every node id is a vocabulary token. With the
character-level tokenizer a number is two tokens, and following an edge means matching a
two-token key in the shuffled list: a 1M-parameter model trained from scratch did not learn that
lookup in 5000 SFT steps (docs/results-log.md, "StarGraph"). ``p>m>T x`` reads as above.

With ``compact=True`` (letters only) an edge is its two letters, ``pm``, and an arm is its letters
in a row, ``pmT x``. Following an edge is then the plain induction-head lookup (find the node just
written, copy the letter after it); with the ``>`` in between, the key sits two tokens before the
value, which a small model learns far more slowly (docs/results-log.md, "StarGraph").
``compact_answer=True`` writes the answer the same way, ``Answer: pmT``: a beacon student, whose
arm lines are evicted by the time it answers, can then rebuild the path edge by edge from the
prompt instead of recalling it.
"""

from __future__ import annotations

import random
import string
from itertools import pairwise

from breadcrumbs_vllm.tasks.base import Problem, Task, final_answer, parse_int_list

#: One-character node names for ``letters=True``: node ``i`` is ``LETTERS[i]``.
LETTERS = string.ascii_letters


class StarGraph(Task):
    """``arms`` arms of ``length`` edges each, node ids drawn from ``0..max_node``, written as
    numbers or (``letters``) as one letter each, with ``>`` between the nodes of an edge or not
    (``compact``)."""

    name = "stargraph"

    def __init__(self, arms: int = 3, length: int = 4, max_node: int = 49,
                 letters: bool = False, compact: bool = False,
                 compact_answer: bool = False) -> None:
        if arms < 1 or length < 1 or max_node < arms * length:
            raise ValueError("stargraph needs arms >= 1, length >= 1 and max_node >= arms*length")
        if letters and max_node >= len(LETTERS):
            raise ValueError(f"stargraph with letters names at most {len(LETTERS)} nodes: "
                             f"max_node must be <= {len(LETTERS) - 1}")
        if compact and not letters:
            raise ValueError("stargraph's compact=true needs letters=true (numbers need the '>')")
        if compact_answer and not compact:
            raise ValueError("stargraph's compact_answer=true needs compact=true")
        self.arms = arms
        self.length = length
        self.max_node = max_node
        self.letters = letters
        #: what stands between two nodes of an edge or an arm
        self.sep = "" if compact else ">"
        #: what stands between two nodes of the answer
        self.answer_sep = "" if compact_answer else ","

    def name_of(self, node: int) -> str:
        return LETTERS[node] if self.letters else str(node)

    def parse_path(self, text: str, sep: str = ",") -> list[int] | None:
        """``"14, 22,8"`` (or ``"p,m,T"``, or with ``sep=""`` ``"pmT"``) -> node ids; ``None`` if
        any item is not a node name."""
        if not self.letters:
            return parse_int_list(text, sep)
        names = list(text) if sep == "" else [item.strip() for item in text.split(sep)]
        if not all(len(n) == 1 and n in LETTERS for n in names):
            return None
        return [LETTERS.index(n) for n in names]

    def generate(self, rng: random.Random) -> Problem:
        nodes = rng.sample(range(self.max_node + 1), self.arms * self.length + 1)
        centre, rest = nodes[0], nodes[1:]
        edges: list[list[int]] = []
        leaves: list[int] = []
        for a in range(self.arms):
            arm = [centre, *rest[a * self.length:(a + 1) * self.length]]
            edges += [[u, v] for u, v in pairwise(arm)]
            leaves.append(arm[-1])
        rng.shuffle(edges)
        target = rng.choice(leaves)
        listed = " ".join(self.name_of(u) + self.sep + self.name_of(v) for u, v in edges)
        prompt = f"Path from {self.name_of(centre)} to {self.name_of(target)}: {listed}"
        return Problem(self.name, prompt, {"edges": edges, "centre": centre, "target": target})

    def solve(self, problem: Problem) -> str:
        data = problem.data
        successor = {u: v for u, v in data["edges"] if u != data["centre"]}
        lines: list[str] = []
        for u, first in data["edges"]:
            if u != data["centre"]:
                continue
            arm = [u, first]
            while arm[-1] in successor:
                arm.append(successor[arm[-1]])
            reached = arm[-1] == data["target"]
            lines.append(self.sep.join(map(self.name_of, arm)) + ("" if reached else " x"))
            if reached:
                lines.append("Answer: " + self.answer_sep.join(map(self.name_of, arm)))
                break
        return "\n".join(lines)

    def diagnose(self, problem: Problem, completion: str) -> str:
        """The first line that differs from the solver's trace, and how.

        ``wrong edge``: the line steps along a pair that is not an edge (the lookup failed);
        ``arm order``: it follows real edges but starts another arm than the solver's next one;
        ``arm cut short``: the solver's arm, stopped before its end; ``dead-end mark``: the
        solver's arm with the `` x`` wrong; ``format``, ``wrong answer``, ``no answer``.
        """
        if self.verify(problem, completion):
            return "correct"
        edges = {tuple(e) for e in problem.data["edges"]}
        written = [line.strip() for line in completion.split("\n") if line.strip()]
        for got, want in zip(written, self.solve(problem).split("\n")):
            if got == want:
                continue
            if want.startswith("Answer"):
                return "wrong answer"
            nodes = self.parse_path(got.removesuffix(" x"), self.sep)
            wanted = self.parse_path(want.removesuffix(" x"), self.sep)
            if nodes is None or len(nodes) < 2:
                return "format"
            if any(pair not in edges for pair in pairwise(nodes)):
                return "wrong edge"
            if nodes[:2] != wanted[:2]:
                return "arm order"
            return "arm cut short" if nodes != wanted else "dead-end mark"
        return "no answer" if final_answer(completion) is None else "wrong answer"

    def check_answer(self, problem: Problem, answer: str) -> bool:
        """The path must be exactly centre..target, comma separated (with ``compact_answer``,
        letters in a row), spaces allowed."""
        if self.answer_sep == "":
            answer = answer.replace(" ", "")
        return self.parse_path(answer, self.answer_sep) == _path(problem.data)


def _path(data: dict) -> list[int]:
    """The one path from the centre to the target, found by walking edges backwards."""
    parent = {v: u for u, v in data["edges"]}
    path = [data["target"]]
    while path[-1] != data["centre"]:
        path.append(parent[path[-1]])
    return path[::-1]
