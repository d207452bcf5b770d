"""A user's prompts and reference answers as a :class:`Task`: what ``--data`` trains and evaluates.

``--data`` is a JSONL file of ``{"prompt": ..., "answer": ...}`` rows, or anything
``datasets.load_dataset`` loads (a local CSV/Parquet/JSON file, or a dataset name where a hub is
reachable) with ``--prompt-column`` / ``--answer-column`` naming the fields. Other fields of a row
are kept in ``Problem.data``, where a built-in task's checker finds what it needs.

:class:`DataTask` plugs the rows into everything that takes a task: the trainer draws its rollout
prompts from it (seeded, so a step is reproducible), ``breadcrumbs eval`` scores held-out rows
with it, and its verifier is one of :mod:`breadcrumbs_vllm.verifiers`.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from breadcrumbs_vllm.tasks.base import Problem, Task
from breadcrumbs_vllm.verifiers import get_verifier


@dataclass(frozen=True)
class DataSpec:
    """Where the rows come from and how they are scored; recorded in ``training_config.json``."""

    path: str
    verifier: str = "exact"
    prompt_column: str = "prompt"
    answer_column: str = "answer"
    split: str = "train"

    def to_dict(self) -> dict:
        return asdict(self)


def load_rows(spec: DataSpec) -> list[dict[str, Any]]:
    """The rows as dicts with ``prompt`` and ``answer`` keys (renamed from the column flags)."""
    path = Path(spec.path)
    if path.suffix == ".jsonl" and path.is_file():
        raw = [_json_line(line, path, i) for i, line in enumerate(path.read_text().splitlines(), 1)
               if line.strip()]
    else:
        raw = _load_dataset(spec)
    rows = []
    for i, row in enumerate(raw, 1):
        missing = [c for c in (spec.prompt_column, spec.answer_column) if c not in row]
        if missing:
            raise ValueError(f"{spec.path}: row {i} has no {' or '.join(map(repr, missing))} field "
                             "(name the columns with --prompt-column / --answer-column)")
        rest = {k: v for k, v in row.items() if k not in (spec.prompt_column, spec.answer_column)}
        rows.append({**rest, "prompt": str(row[spec.prompt_column]),
                     "answer": row[spec.answer_column]})
    if not rows:
        raise ValueError(f"{spec.path} holds no rows")
    return rows


def _json_line(line: str, path: Path, number: int) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{number} is not valid JSON: {exc.msg}") from None
    if not isinstance(row, dict):
        raise ValueError(f"{path}:{number} is not a JSON object")  # noqa: TRY004 -- user input
    return row


def _load_dataset(spec: DataSpec) -> list[dict]:
    import datasets

    path = Path(spec.path)
    try:
        if path.is_file():
            builder = {".csv": "csv", ".json": "json", ".jsonl": "json",
                       ".parquet": "parquet"}.get(path.suffix)
            if builder is None:
                raise ValueError(f"{spec.path}: unknown data file type {path.suffix!r} "
                                 "(use .jsonl, .json, .csv or .parquet)")
            data = datasets.load_dataset(builder, data_files=str(path), split=spec.split)
        else:
            data = datasets.load_dataset(spec.path, split=spec.split)
    except (FileNotFoundError, datasets.exceptions.DatasetNotFoundError, ConnectionError) as exc:
        raise ValueError(f"--data {spec.path!r} cannot be loaded: "
                         f"{str(exc).splitlines()[0]}") from None
    return [dict(row) for row in data]


class DataTask(Task):
    """Rows of a data file scored by a verifier.

    ``solve`` returns the reference answer, so ``--trace-steps`` warm-starts on it where it is a
    worked solution (GSM8K's are). ``problems(n, seed)`` shuffles the rows with ``seed`` and takes
    ``n``, cycling through the rows again when ``n`` exceeds them.
    """

    name = "data"

    def __init__(self, spec: DataSpec) -> None:
        self.spec = spec
        self.name = f"{Path(spec.path).name} ({spec.verifier})"  # what titles and tables show
        self.verifier = get_verifier(spec.verifier)
        self.rows = load_rows(spec)

    def generate(self, rng: random.Random) -> Problem:
        return self._problem(rng.choice(self.rows))

    def problems(self, n: int, seed: int) -> list[Problem]:
        order = list(range(len(self.rows)))
        random.Random(seed).shuffle(order)
        return [self._problem(self.rows[order[i % len(order)]]) for i in range(n)]

    def _problem(self, row: dict) -> Problem:
        return Problem(task=self.name, prompt=row["prompt"],
                       data={k: v for k, v in row.items() if k != "prompt"})

    def solve(self, problem: Problem) -> str:
        return str(problem.data["answer"])

    def check_answer(self, problem: Problem, answer: str) -> bool:
        return self.verify(problem, f"Answer: {answer}") > 0

    def verify(self, problem: Problem, completion: str) -> float:
        return float(self.verifier.verify(problem, completion))

    def diagnose(self, problem: Problem, completion: str) -> str:
        if hasattr(self.verifier, "diagnose"):
            return self.verifier.diagnose(problem, completion)
        return "correct" if self.verify(problem, completion) else "wrong answer"
