"""Two running sums: list A, then list B, then the two totals. The next SmolLM2 student's task.

The last line needs list A's total, written before all of list B's lines and found in neither
the prompt nor the recent lines. With list B long enough, no sliding window at a beacon
student's KV keeps it (``docs/results-log.md``, "SmolLM2: a task no window solves"):

    python recipes/two_sums.py --n 20000 --seed 0 --b-lengths 22,26 --out runs/two-sums/train.jsonl
    python recipes/two_sums.py --n 500 --seed 1 --b-lengths 22,26 \\
        --exclude runs/two-sums/train.jsonl --out runs/two-sums/held-out.jsonl

Lines are compact (``8+5=13``: SmolLM2 writes each digit as a token, a space as another).
``--lists-first`` puts the lists before the instruction.
"""

from __future__ import annotations

import random
from functools import partial

from sums import cli, running_sum, write_rows

INSTRUCTION = ("Add up list A and list B separately, one number at a time, then add the two "
               "totals.")
END = "End with 'Answer: <number>'."


def row(rng: random.Random, b_lengths: tuple[int, int], lists_first: bool) -> dict[str, str]:
    a = [rng.randint(1, 9) for _ in range(rng.randint(4, 5))]
    b = [rng.randint(1, 9) for _ in range(rng.randint(*b_lengths))]
    (lines_a, total_a), (lines_b, total_b) = (running_sum(x, "{}+{}={}") for x in (a, b))
    lists = f"A: {', '.join(map(str, a))}. B: {', '.join(map(str, b))}."
    prompt = f"{lists} {INSTRUCTION} {END}" if lists_first else f"{INSTRUCTION} {lists} {END}"
    answer = ["A: " + lines_a[0], *lines_a[1:], "B: " + lines_b[0], *lines_b[1:],
              f"Answer: {total_a}+{total_b}={total_a + total_b}"]
    return {"prompt": prompt, "answer": "\n".join(answer)}


def main() -> None:
    parser = cli(__doc__.splitlines()[0])
    parser.add_argument("--b-lengths", default="4,5", help="LO,HI: how many numbers list B has")
    parser.add_argument("--lists-first", action="store_true",
                        help="the lists before the instruction (the default puts them inside it)")
    args = parser.parse_args()
    low, high = map(int, args.b_lengths.split(","))
    write_rows(args, partial(row, b_lengths=(low, high), lists_first=args.lists_first))


if __name__ == "__main__":
    main()
