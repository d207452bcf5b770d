"""Running sums in plain English: the task the SmolLM2 pair is trained on, written as JSONL rows.

Each row is ``{"prompt", "answer"}`` for ``--data`` (``verifier exact``): the prompt lists
numbers to add from left to right; the answer is the worked solution, one partial sum a line,
ending in ``Answer: N``. A student that compresses its reasoning has to carry the running total
and its place in the list through the beacons: the lines that wrote them are evicted, the prompt
is not. A short LoRA fine-tune of SmolLM2-135M-Instruct on these answers makes it the teacher
(``recipes/smollm2.mk``).

    python recipes/sums.py --n 20000 --seed 0 --out runs/smollm2/train.jsonl
    python recipes/sums.py --n 500 --seed 1 --exclude runs/smollm2/train.jsonl \\
        --out runs/smollm2/held-out.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path

INSTRUCTION = ("Add these numbers from left to right, one at a time: {numbers}. "
               "End with 'Answer: <number>'.")


def running_sum(numbers: list[int], line: str) -> tuple[list[str], int]:
    """The worked lines adding ``numbers`` left to right (``line`` formats total, number, sum),
    and the total."""
    lines, total = [], numbers[0]
    for n in numbers[1:]:
        lines.append(line.format(total, n, total + n))
        total += n
    return lines, total


def row(rng: random.Random, lengths: tuple[int, int] = (6, 10),
        values: tuple[int, int] = (2, 30)) -> dict[str, str]:
    numbers = [rng.randint(*values) for _ in range(rng.randint(*lengths))]
    lines, total = running_sum(numbers, "{} + {} = {}")
    return {"prompt": INSTRUCTION.format(numbers=", ".join(map(str, numbers))),
            "answer": "\n".join(lines + [f"Answer: {total}"])}


def cli(description: str) -> argparse.ArgumentParser:
    """The options every generator here takes: how many rows, the seed, rows to avoid, where."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--exclude", type=Path, default=None,
                        help="JSONL whose prompts must not recur (held-out rows vs training rows)")
    parser.add_argument("--out", type=Path, required=True)
    return parser


def write_rows(args: argparse.Namespace, make_row: Callable[[random.Random], dict]) -> None:
    """``args.n`` rows of ``make_row``, seeded, no prompt twice or in ``args.exclude``."""
    seen = set()
    if args.exclude is not None:
        seen = {json.loads(line)["prompt"] for line in args.exclude.read_text().splitlines()}
    rng, rows = random.Random(args.seed), []
    while len(rows) < args.n:
        new = make_row(rng)
        if new["prompt"] not in seen:
            seen.add(new["prompt"])
            rows.append(new)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} rows to {args.out}")


def main() -> None:
    write_rows(cli(__doc__.splitlines()[0]).parse_args(), row)


if __name__ == "__main__":
    main()
