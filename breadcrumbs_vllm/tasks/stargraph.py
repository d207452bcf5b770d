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
"""

from __future__ import annotations

import random
import string
from itertools import pairwise

from breadcrumbs_vllm.tasks.base import Problem, Task, parse_int_list

#: One-character node names for ``letters=True``: node ``i`` is ``LETTERS[i]``.
LETTERS = string.ascii_letters


class StarGraph(Task):
    """``arms`` arms of ``length`` edges each, node ids drawn from ``0..max_node``, written as
    numbers or (``letters``) as one letter each."""

    name = "stargraph"

    def __init__(self, arms: int = 3, length: int = 4, max_node: int = 49,
                 letters: bool = False) -> None:
        if arms < 1 or length < 1 or max_node < arms * length:
            raise ValueError("stargraph needs arms >= 1, length >= 1 and max_node >= arms*length")
        if letters and max_node >= len(LETTERS):
            raise ValueError(f"stargraph with letters names at most {len(LETTERS)} nodes: "
                             f"max_node must be <= {len(LETTERS) - 1}")
        self.arms = arms
        self.length = length
        self.max_node = max_node
        self.letters = letters

    def name_of(self, node: int) -> str:
        return LETTERS[node] if self.letters else str(node)

    def parse_path(self, text: str) -> list[int] | None:
        """``"14, 22,8"`` (or ``"p,m,T"``) -> node ids; ``None`` if any item is not a node name."""
        if not self.letters:
            return parse_int_list(text)
        names = [item.strip() for item in text.split(",")]
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
        listed = " ".join(f"{self.name_of(u)}>{self.name_of(v)}" for u, v in edges)
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
            lines.append(">".join(map(self.name_of, arm)) + ("" if reached else " x"))
            if reached:
                lines.append("Answer: " + ",".join(map(self.name_of, arm)))
                break
        return "\n".join(lines)

    def check_answer(self, problem: Problem, answer: str) -> bool:
        """The path must be exactly centre..target, comma separated, spaces allowed."""
        return self.parse_path(answer) == _path(problem.data)


def _path(data: dict) -> list[int]:
    """The one path from the centre to the target, found by walking edges backwards."""
    parent = {v: u for u, v in data["edges"]}
    path = [data["target"]]
    while path[-1] != data["centre"]:
        path.append(parent[path[-1]])
    return path[::-1]
