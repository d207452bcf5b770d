"""The training-time equivalent of beacon eviction (spec rule 6) as one masked forward pass.

For a prompt and its generated tokens, beacons are inserted after every ``c``-th generated token
(:func:`breadcrumbs_vllm.spec.insert_beacons`), positions run ``0..L-1``, and the attention mask
lets each token see exactly what the decoder's cache holds when that token is fed:

* a prompt token: the prompt up to itself (causal);
* a token of window ``k``: the prompt, beacons ``b_1..b_{k-1}``, window ``k`` up to itself;
* beacon ``b_k``: the prompt, ``b_1..b_{k-1}``, all of window ``k`` and itself.

So the logits of this pass equal incremental decoding with real eviction (tested in
``tests/test_mask.py``), and a model can learn to compress in parallel over whole sequences.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from breadcrumbs_vllm.spec import insert_beacons

IGNORE_INDEX = -100


@dataclass
class BeaconBatch:
    """Model inputs for a right-padded batch, plus where beacons and targets are."""

    input_ids: torch.Tensor  # [B, L]
    position_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, 1, L, L] additive: 0 keeps, dtype-min masks
    is_beacon: torch.Tensor  # [B, L] bool
    #: [B, L] next non-beacon token each position predicts (generated part only), else -100.
    labels: torch.Tensor

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids,
            "position_ids": self.position_ids,
            "attention_mask": self.attention_mask,
        }


def beacon_mask(kinds: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """Boolean ``[L, L]`` mask (query x key) for one sequence.

    ``kinds``: 0 prompt, 1 generated, 2 beacon. ``windows``: window index of generated tokens and
    beacons (1-based), 0 for the prompt.
    """
    length = kinds.shape[0]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    q_win, k_win = windows[:, None], windows[None, :]
    k_kind = kinds[None, :]
    visible = (
        (k_kind == 0)
        | ((k_kind == 2) & (k_win < q_win))
        | ((k_kind == 1) & (k_win == q_win))
        | torch.eye(length, dtype=torch.bool)
    )
    return causal & visible


def build_beacon_batch(
    prompts: Sequence[Sequence[int]],
    generations: Sequence[Sequence[int]],
    ratios: Sequence[int | None],
    beacon_id: int,
    pad_id: int,
    dtype: torch.dtype = torch.float32,
) -> BeaconBatch:
    """Insert beacons per sequence (ratio ``None``: none, plain causal) and build the batch."""
    rows = []
    for prompt, generated, ratio in zip(prompts, generations, ratios, strict=True):
        body, flags = insert_beacons(generated, ratio, beacon_id)
        tokens = list(prompt) + body
        kinds = [0] * len(prompt) + [2 if f else 1 for f in flags]
        windows = [0] * len(prompt)
        gen_seen = 0
        for flag in flags:
            if flag:
                windows.append(gen_seen // ratio)  # the beacon closes window gen_seen / c
            else:
                windows.append(gen_seen // ratio + 1 if ratio else 1)
                gen_seen += 1
        # Labels: each non-beacon position from the last prompt token on predicts the next
        # generated token; beacons predict nothing (rule 6).
        labels = [IGNORE_INDEX] * len(tokens)
        targets = [i for i, k in enumerate(kinds) if k == 1]
        sources = [len(prompt) - 1] + targets[:-1]
        for src, tgt in zip(sources, targets):
            labels[src] = tokens[tgt]
        rows.append((tokens, kinds, windows, labels))

    batch, width = len(rows), max(len(r[0]) for r in rows)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((batch, width), dtype=torch.long)
    is_beacon = torch.zeros((batch, width), dtype=torch.bool)
    labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
    allowed = torch.eye(width, dtype=torch.bool).repeat(batch, 1, 1)  # padding sees itself only
    for b, (tokens, kinds, windows, row_labels) in enumerate(rows):
        n = len(tokens)
        input_ids[b, :n] = torch.tensor(tokens)
        position_ids[b, :n] = torch.arange(n)
        is_beacon[b, :n] = torch.tensor(kinds) == 2
        labels[b, :n] = torch.tensor(row_labels)
        allowed[b, :n, :n] = beacon_mask(torch.tensor(kinds), torch.tensor(windows))
    mask = torch.zeros((batch, 1, width, width), dtype=dtype)
    mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
    return BeaconBatch(input_ids, position_ids, mask, is_beacon, labels)
