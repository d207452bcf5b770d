"""Training-step benchmark: packed vs padded batches, float32 vs bf16 autocast.

One process, one run. Every setting takes the student's warm-start step (``breadcrumbs train
student --trace-steps``) on the same batches: the teacher's forward pass without beacons, the
student's forward and backward pass with a ratio drawn per sequence, one AdamW step. "padded"
gives every sequence a row of its own (the layout before packing); "packed" lets short sequences
share a row (:func:`breadcrumbs_vllm.training.mask.build_beacon_batch`).

Wall-clock speed on a shared machine drifts, so the settings run interleaved: every round runs each
setting once on that round's batch, each time is divided by the padded float32 time *of the same
round*, and the table shows the median speed-up with its range.

    python loadtests/bench_training.py     # defaults: batch 32, 5 rounds, ~2 min on 2 cores
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import time

import torch
from tqdm.auto import tqdm

from breadcrumbs_vllm.checkpoint import load_checkpoint
from breadcrumbs_vllm.reference import ReferenceEngine
from breadcrumbs_vllm.tasks import get_task
from breadcrumbs_vllm.training.losses import distill_kl, sft_loss
from breadcrumbs_vllm.training.mask import build_beacon_batch
from breadcrumbs_vllm.training.trainer import solver_batch

#: (name, packed, autocast dtype or None)
SETTINGS = [("padded float32", False, None), ("packed float32", True, None),
            ("padded bf16", False, torch.bfloat16), ("packed bf16", True, torch.bfloat16)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/countdown-teacher", help="teacher checkpoint")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ratios", default="2,4,8,16")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    ratios = [int(r) for r in args.ratios.split(",")]

    teacher, tokenizer, bc = load_checkpoint(args.model, attn_implementation="sdpa")
    student, _, _ = load_checkpoint(args.model, attn_implementation="sdpa")
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)
    task = get_task(bc.task, **bc.task_options)
    engine = ReferenceEngine(teacher, tokenizer, bc)

    def step(prompts, traces, seq_ratios, packed: bool, dtype) -> float:
        start = time.perf_counter()
        plain = build_beacon_batch(prompts, traces, [None] * len(prompts), bc.beacon_token_id,
                                   tokenizer.pad_token_id, packed=packed)
        beacons = build_beacon_batch(prompts, traces, seq_ratios, bc.beacon_token_id,
                                     tokenizer.pad_token_id, packed=packed)
        cast = torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext()
        with cast:
            with torch.no_grad():
                target = plain.gather(teacher(**plain.model_inputs()).logits)
            logits = beacons.gather(student(**beacons.model_inputs()).logits)
            loss = distill_kl(logits, target) + sft_loss(logits, beacons.targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    speedups: dict[str, list[float]] = {name: [] for name, _, _ in SETTINGS}
    padding: dict[bool, list[float]] = {False: [], True: []}
    for r in tqdm(range(args.rounds), desc="rounds"):
        prompts, traces = solver_batch(engine, task, task.problems(args.batch, seed=r))
        rng = random.Random(r)
        seq_ratios = [rng.choice(ratios) for _ in prompts]
        for packed in (False, True):
            batch = build_beacon_batch(prompts, traces, seq_ratios, bc.beacon_token_id,
                                       tokenizer.pad_token_id, packed=packed)
            padding[packed].append(
                (batch.input_ids == tokenizer.pad_token_id).float().mean().item())
        if r == 0:  # warm-up, untimed: the first pass pays for allocations and kernel selection
            for _, packed, dtype in SETTINGS:
                step(prompts, traces, seq_ratios, packed, dtype)
        order = SETTINGS if r % 2 == 0 else SETTINGS[::-1]
        times = {name: step(prompts, traces, seq_ratios, packed, dtype)
                 for name, packed, dtype in order}
        for name, values in speedups.items():
            values.append(times["padded float32"] / times[name])

    print(f"\nstudent warm-start step, batch {args.batch}, {args.rounds} rounds, "
          f"{args.threads} threads ({args.model})")
    print(f"padding share of the batch: padded {statistics.mean(padding[False]):.0%}, "
          f"packed {statistics.mean(padding[True]):.0%}")
    print(f"{'setting':<16} {'speed-up vs padded float32 (median, range)':>44}")
    for name, values in speedups.items():
        print(f"{name:<16} {statistics.median(values):>30.2f}x "
              f"({min(values):.2f}-{max(values):.2f})")


if __name__ == "__main__":
    main()
