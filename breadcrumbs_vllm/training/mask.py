"""The training-time equivalent of beacon eviction (spec rule 6) as one masked forward pass.

For a prompt and its generated tokens, beacons are inserted after every window of the sequence's
ratio path (a fixed ratio ``c``, or one that rises at window boundaries, spec rule 8:
:meth:`breadcrumbs_vllm.spec.BeaconSchedule.insert_beacons`), positions run ``0..L-1``, and the
attention mask lets each token see exactly what the decoder's cache holds when that token is fed:

* a prompt token: the prompt up to itself (causal);
* a token of window ``k``: the prompt, beacons ``b_1..b_{k-1}``, window ``k`` up to itself;
* beacon ``b_k``: the prompt, ``b_1..b_{k-1}``, all of window ``k`` and itself.

The mask reads only window numbers, never a ratio: window ``k`` is whatever the path made it. So
the logits of this pass equal incremental decoding with real eviction, switches included (tested
in ``tests/test_mask.py``), and a model can learn to compress in parallel over whole sequences.

Sequences are packed: several short ones share a row of the batch, each with its own positions
from 0 and its own block of the mask, so no token sees another sequence. Solver traces vary in
length by 2x and the ratio adds up to 50% beacons, so padding every sequence to the longest one
would spend about half of each forward pass on padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import cached_property
from itertools import accumulate

import torch

from breadcrumbs_vllm.spec import BeaconSchedule, RatioPath

#: What each position of a laid-out sequence holds.
PROMPT, GENERATED, BEACON, PADDING = 0, 1, 2, 3


@dataclass
class BeaconBatch:
    """Model inputs for a packed batch, plus where beacons are and what each position predicts.

    The model sees ``[R, W]`` rows; the losses see the ``N`` predicting positions (every
    non-beacon position from a sequence's last prompt token on, rule 6) gathered into one list,
    sequence after sequence, so that two batches of the same sequences line up position by
    position however differently they were packed (the student's has beacons, the teacher's not).

    The ``[R, 1, W, W]`` attention mask is not a field: :attr:`attention_mask` builds it from the
    ``[R, W]`` kinds, windows and segments on whatever device the batch is on, so a GPU step copies
    ``O(R * W)`` integers to the device instead of ``O(R * W * W)`` mask entries, and builds the
    mask in a few vectorised operations instead of one Python-driven block per sequence.
    """

    input_ids: torch.Tensor  # [R, W]
    position_ids: torch.Tensor  # [R, W], from 0 in every sequence
    kinds: torch.Tensor  # [R, W] PROMPT, GENERATED, BEACON or PADDING
    windows: torch.Tensor  # [R, W] window of each generated token and beacon (1-based), else 0
    segments: torch.Tensor  # [R, W] which sequence each position holds, -1 for padding
    targets: torch.Tensor  # [N] the generated token each predicting position predicts
    owner: torch.Tensor  # [N] which sequence (index into the inputs) each target belongs to
    index: torch.Tensor  # [N] each predicting position as a flat index into [R * W]

    @property
    def is_beacon(self) -> torch.Tensor:
        return self.kinds == BEACON

    @cached_property
    def attention_mask(self) -> torch.Tensor:
        """``[R, 1, W, W]`` additive float32 mask: 0 where a query may see a key, the dtype's min
        elsewhere. Built once per batch: a GRPO step runs the same batch through the reference
        and then each PPO epoch."""
        allowed = beacon_mask(self.kinds, self.windows, self.segments)
        mask = torch.full(allowed.shape, torch.finfo(torch.float32).min, device=allowed.device)
        return mask.masked_fill_(allowed, 0.0)[:, None]

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids,
            "position_ids": self.position_ids,
            "attention_mask": self.attention_mask,
        }

    def gather(self, logits: torch.Tensor) -> torch.Tensor:
        """``[R, W, V]`` model outputs -> ``[N, V]``, the predicting positions in target order."""
        return logits.flatten(0, 1)[self.index]

    def to(self, device: torch.device | str) -> BeaconBatch:
        return BeaconBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


@dataclass
class _Row:
    """One sequence laid out: tokens, kind and window of each, and its predicting positions."""

    tokens: list[int]
    kinds: list[int]  # PROMPT, GENERATED or BEACON
    windows: list[int]
    sources: list[int]  # positions that predict, in order
    targets: list[int]  # the token each of them predicts


def beacon_mask(kinds: torch.Tensor, windows: torch.Tensor,
                segments: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean ``[..., L, L]`` mask (query x key) for ``[..., L]`` laid-out positions.

    ``kinds``: PROMPT, GENERATED, BEACON or PADDING. ``windows``: window index of generated
    tokens and beacons (1-based), 0 for the prompt. ``segments``: which sequence of a packed row
    each position holds (``None``: one sequence); a query sees no key of another segment. Every
    position sees itself, so a padding position (which sees nothing else) has a finite softmax.
    """
    length = kinds.shape[-1]
    position = torch.arange(length, device=kinds.device)
    q_win, k_win = windows[..., :, None], windows[..., None, :]
    k_kind = kinds[..., None, :]
    # In place where it can be: the [..., L, L] tensors are the whole cost of a packed batch.
    visible = (k_win < q_win).logical_and_(k_kind == BEACON)
    visible.logical_or_((k_win == q_win).logical_and_(k_kind == GENERATED))
    visible.logical_or_(k_kind == PROMPT)
    if segments is not None:
        visible.logical_and_(segments[..., :, None] == segments[..., None, :])
    visible.logical_and_(position[None, :] <= position[:, None])  # causal
    return visible.logical_or_(torch.eye(length, dtype=torch.bool, device=kinds.device))


def lay_out(prompt: Sequence[int], generated: Sequence[int], ratio: int | None,
            beacon_id: int, switches: RatioPath = ()) -> _Row:
    """Insert beacons along the ratio path ``ratio`` then ``switches`` (ratio ``None``: none) and
    find which positions predict which token."""
    body, flags = BeaconSchedule(len(prompt), ratio, switches).insert_beacons(generated, beacon_id)
    kinds = [PROMPT] * len(prompt) + [BEACON if f else GENERATED for f in flags]
    # Window k holds the tokens after beacon k - 1 and beacon k itself, whatever its length.
    closed_before = list(accumulate(flags, initial=0))[:-1]
    windows = [0] * len(prompt) + [closed + 1 for closed in closed_before]
    tokens = list(prompt) + body
    # Each non-beacon position from the last prompt token on predicts the next generated
    # token; beacons predict nothing (rule 6).
    generated_at = [i for i, k in enumerate(kinds) if k == GENERATED]
    sources = [len(prompt) - 1] + generated_at[:-1]
    return _Row(tokens, kinds, windows, sources[:len(generated_at)],
                [tokens[i] for i in generated_at])


def pack(lengths: Sequence[int], width: int) -> list[list[int]]:
    """First-fit decreasing: sequence indices per row, no row longer than ``width``."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        slot = next((r for r, space in enumerate(free) if space >= lengths[i]), None)
        if slot is None:
            rows.append([])
            free.append(width)
            slot = len(rows) - 1
        rows[slot].append(i)
        free[slot] -= lengths[i]
    return rows


def build_beacon_batch(
    prompts: Sequence[Sequence[int]],
    generations: Sequence[Sequence[int]],
    ratios: Sequence[int | None],
    beacon_id: int,
    pad_id: int,
    packed: bool = True,
    switches: Sequence[RatioPath] | None = None,
) -> BeaconBatch:
    """Lay out every sequence (its own ratio path), pack them into rows as wide as the longest one.

    ``switches``: per sequence, where its ratio rises (rule 8); ``None``: every ratio is fixed.
    ``packed=False`` gives each sequence a row of its own (the padded layout, for comparison:
    ``loadtests/bench_training.py``).
    """
    switches = [()] * len(prompts) if switches is None else switches
    seqs = [lay_out(p, g, r, beacon_id, s)
            for p, g, r, s in zip(prompts, generations, ratios, switches, strict=True)]
    lengths = [len(s.tokens) for s in seqs]
    width = max(lengths)
    rows = pack(lengths, width) if packed else [[i] for i in range(len(seqs))]

    # Each row's columns as one list per field, the padding at its end, then one tensor each.
    columns: dict[str, list[list[int]]] = {f: [] for f in ("tokens", "positions", "kinds",
                                                           "windows", "segments")}
    start = [0] * len(seqs)  # flat index of each sequence's first token
    for r, members in enumerate(rows):
        row: dict[str, list[int]] = {f: [] for f in columns}
        for i in members:
            s = seqs[i]
            start[i] = r * width + len(row["tokens"])
            row["tokens"] += s.tokens
            row["positions"] += range(len(s.tokens))
            row["kinds"] += s.kinds
            row["windows"] += s.windows
            row["segments"] += [i] * len(s.tokens)
        pad = width - len(row["tokens"])
        for field, fill in (("tokens", pad_id), ("positions", 0), ("kinds", PADDING),
                            ("windows", 0), ("segments", -1)):
            columns[field].append(row[field] + [fill] * pad)
    tensors = {f: torch.tensor(v, dtype=torch.long) for f, v in columns.items()}
    index = torch.tensor([start[i] + j for i, s in enumerate(seqs) for j in s.sources],
                         dtype=torch.long)
    targets = torch.tensor([t for s in seqs for t in s.targets], dtype=torch.long)
    owner = torch.tensor([i for i, s in enumerate(seqs) for _ in s.targets], dtype=torch.long)
    return BeaconBatch(tensors["tokens"], tensors["positions"], tensors["kinds"],
                       tensors["windows"], tensors["segments"], targets, owner, index)
