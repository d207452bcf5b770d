"""The reference Breadcrumbs engine: batched incremental decoding with real eviction, in PyTorch.

This is the oracle every other implementation is tested against, so it favours being obviously
right over being fast. Each sequence owns its KV cache as plain tensors (one pair per layer);
every step, every live sequence feeds exactly one token (its pending sampled token, or a beacon),
the caches are left-padded into one batch, the transformers model runs one step, and the new KV
entry is appended back to each sequence. Eviction is literal: entries are cut out of the tensors.

The decoding loop is the spec's rule 2. With ratio ``c`` and the current window ``x_1..x_c``:
``y`` is sampled from ``x_c``'s logits; if ``y`` does not end the generation the beacon is fed
next (its logits are discarded), the ``c`` window entries are evicted, and then ``y`` is fed.
A request's ratio may rise at window boundaries (rule 8, ``GenerationRequest.switches``): each
window is as long as the ratio in force where it starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from breadcrumbs_vllm.checkpoint import BreadcrumbsConfig, load_checkpoint, stop_token_ids
from breadcrumbs_vllm.reference.policies import KVPolicy
from breadcrumbs_vllm.spec import BeaconSchedule, validate_ratio


@dataclass
class GenerationRequest:
    """One prompt to decode. ``ratio=None`` decodes uncompressed; ``policy`` adds a baseline.

    ``switches``: the ``(t_k, c_k)`` at which the ratio rises (rule 8, see
    :class:`breadcrumbs_vllm.spec.BeaconSchedule`); windows after generated token ``t_k`` are
    ``c_k`` long. Empty: the fixed ``ratio``.
    """

    prompt_ids: list[int]
    ratio: int | None = None
    switches: tuple[tuple[int, int], ...] = ()
    max_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: list[int] | None = None  # None: the model's end-of-turn tokens
    ignore_eos: bool = False
    policy: KVPolicy | None = None
    return_logits: bool = False
    #: Ends the generation (finish reason ``"budget"``) where the next forward would make the
    #: cache hold more than this many entries, prompt included; ``None``: no such limit.
    kv_budget: int | None = None


@dataclass
class GenerationResult:
    """What a request produced and what it cost in KV entries."""

    token_ids: list[int]
    finish_reason: str  # "stop", "length", or "budget" (the request's kv_budget was reached)
    num_beacons: int
    peak_kv_entries: int
    mean_kv_entries: float
    #: KV length right after every forward pass (prefill, tokens and beacons).
    kv_trace: list[int]
    #: For each generated token, top-1 minus top-2 logit of the distribution it was drawn from.
    top2_margins: list[float]
    #: ``[n, vocab]`` logits each generated token was drawn from, when requested.
    logits: torch.Tensor | None = None


@dataclass
class _LayerKV:
    keys: torch.Tensor  # [kv_heads, length, head_dim]
    values: torch.Tensor

    def keep(self, index: torch.Tensor) -> None:
        index = index.to(self.keys.device)  # policies decide on the CPU; the cache may be on a GPU
        self.keys = self.keys[:, index]
        self.values = self.values[:, index]


@dataclass
class _Sequence:
    """Decoding state of one request."""

    request: GenerationRequest
    schedule: BeaconSchedule
    layers: list[_LayerKV]
    next_position: int
    generator: torch.Generator | None
    pending: int = -1  # sampled, not yet fed
    window: int = 0  # generated tokens of the current window whose KV is cached
    num_beacons: int = 0
    generated: list[int] = field(default_factory=list)
    kv_trace: list[int] = field(default_factory=list)
    margins: list[float] = field(default_factory=list)
    logits: list[torch.Tensor] = field(default_factory=list)
    finish_reason: str | None = None

    @property
    def kv_len(self) -> int:
        return self.layers[0].keys.shape[1]

    @property
    def feeds_beacon(self) -> bool:
        """The current window is full: it holds as many tokens as the ratio in force where it
        started, after the ``len(generated) - 1 - window`` generated tokens fed before it (the
        last generated token is the pending one)."""
        started_after = len(self.generated) - 1 - self.window
        return self.window > 0 and self.window == self.schedule.ratio_for(started_after)


class ReferenceEngine:
    """Decodes batches of :class:`GenerationRequest` on a transformers causal LM."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase | None,
        bc: BreadcrumbsConfig,
    ) -> None:
        self.model = model.eval()
        #: Where the cache and the model inputs live. Sampling and baseline policies run on the
        #: CPU (a seeded CPU generator draws the same tokens whatever the model's device).
        self.device = next(model.parameters()).device
        self.tokenizer = tokenizer
        self.bc = bc
        self.beacon_id = bc.beacon_token_id
        # vLLM's stops: the tokenizer's end of sequence and the generation config's eos ids.
        self.default_stop_ids = (stop_token_ids(tokenizer,
                                                getattr(model, "generation_config", None))
                                 if tokenizer is not None else [])

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> ReferenceEngine:
        model, tokenizer, bc = load_checkpoint(path, attn_implementation="eager")
        return cls(model, tokenizer, bc)

    # ----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(
        self, requests: Sequence[GenerationRequest], progress: bool = False
    ) -> list[GenerationResult]:
        """Decode all requests together and return their results in order."""
        seqs = [self._prefill(r) for r in requests]
        live = [s for s in seqs if s.finish_reason is None]
        bar = tqdm(total=sum(r.max_tokens for r in requests), disable=not progress, unit="tok",
                   desc="decoding")
        bar.update(sum(len(s.generated) for s in seqs))
        while live:
            before = sum(len(s.generated) for s in live)
            self._step(live)
            bar.update(sum(len(s.generated) for s in live) - before)
            live = [s for s in live if s.finish_reason is None]
        bar.close()
        return [self._result(s) for s in seqs]

    # ----------------------------------------------------------------------------------------
    def _prefill(self, request: GenerationRequest) -> _Sequence:
        ratio = validate_ratio(request.ratio)
        if ratio is not None and request.policy is not None:
            raise ValueError("a request uses either a compression ratio or a baseline policy")
        if not request.prompt_ids:
            raise ValueError("the prompt is empty")
        schedule = BeaconSchedule(len(request.prompt_ids), ratio, request.switches)
        if request.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if request.kv_budget is not None and request.kv_budget < len(request.prompt_ids):
            raise ValueError(f"the prompt ({len(request.prompt_ids)} tokens) does not fit the KV "
                             f"budget of {request.kv_budget} entries")
        generator = None
        if request.temperature > 0:
            generator = torch.Generator().manual_seed(
                request.seed if request.seed is not None else 0)
        cache = DynamicCache()
        prompt = torch.tensor([request.prompt_ids], device=self.device)
        out = self.model(
            input_ids=prompt,
            position_ids=torch.arange(len(request.prompt_ids), device=self.device)[None],
            past_key_values=cache,
            use_cache=True,
        )
        seq = _Sequence(
            request=request,
            schedule=schedule,
            layers=[_LayerKV(layer.keys[0], layer.values[0]) for layer in cache.layers],
            next_position=len(request.prompt_ids),
            generator=generator,
        )
        seq.kv_trace.append(seq.kv_len)
        self._sample(seq, out.logits[0, -1])
        return seq

    def _step(self, seqs: list[_Sequence]) -> None:
        """Feed one token per sequence (a beacon or its pending token) in one batched forward."""
        width = max(s.kv_len for s in seqs)
        batch, heads, dim = len(seqs), *seqs[0].layers[0].keys.shape[::2]
        dtype = seqs[0].layers[0].keys.dtype
        cache = DynamicCache()
        for layer_idx in range(len(seqs[0].layers)):
            keys = torch.zeros(batch, heads, width, dim, dtype=dtype, device=self.device)
            values = torch.zeros_like(keys)
            for b, s in enumerate(seqs):  # left padding: the newest entry lines up at the end
                keys[b, :, width - s.kv_len:] = s.layers[layer_idx].keys
                values[b, :, width - s.kv_len:] = s.layers[layer_idx].values
            cache.update(keys, values, layer_idx)
        mask = torch.full((batch, 1, 1, width + 1), torch.finfo(dtype).min, dtype=dtype,
                          device=self.device)
        for b, s in enumerate(seqs):
            mask[b, ..., width - s.kv_len:] = 0.0
        tokens = [self.beacon_id if s.feeds_beacon else s.pending for s in seqs]
        needs_attention = any(s.request.policy and s.request.policy.needs_attention for s in seqs)
        out = self.model(
            input_ids=torch.tensor(tokens, device=self.device)[:, None],
            position_ids=torch.tensor([s.next_position for s in seqs], device=self.device)[:, None],
            attention_mask=mask,
            past_key_values=cache,
            use_cache=True,
            output_attentions=needs_attention,
        )
        for b, s in enumerate(seqs):
            start = width - s.kv_len  # this sequence's first column, padding excluded
            for layer_idx, layer in enumerate(s.layers):
                layer.keys = cache.layers[layer_idx].keys[b, :, start:]
                layer.values = cache.layers[layer_idx].values[b, :, start:]
            s.next_position += 1
            attention = None
            if needs_attention:
                attention = [a[b, :, -1, start:].cpu() for a in out.attentions]
            self._after_forward(s, out.logits[b, -1], attention)

    def _after_forward(
        self, seq: _Sequence, logits: torch.Tensor, attention: list[torch.Tensor] | None
    ) -> None:
        seq.kv_trace.append(seq.kv_len)
        if seq.feeds_beacon:
            # Rule 2: beacon logits are discarded; the window's entries go, the beacon stays.
            keep = torch.ones(seq.kv_len, dtype=torch.bool, device=self.device)
            keep[seq.kv_len - 1 - seq.window: seq.kv_len - 1] = False
            for layer in seq.layers:
                layer.keep(keep)
            seq.window = 0
            seq.num_beacons += 1
            return
        if seq.request.ratio is not None:
            seq.window += 1
        policy = seq.request.policy
        if policy is not None:
            for layer_idx, layer in enumerate(seq.layers):
                evict = policy.select(
                    layer.keys.shape[1], seq.schedule.prompt_len,
                    attention[layer_idx] if attention is not None else None,
                    layer=layer_idx, keys=layer.keys.cpu(),
                )
                keep = torch.ones(layer.keys.shape[1], dtype=torch.bool)
                keep[evict] = False
                layer.keep(keep)
        self._sample(seq, logits)

    def _sample(self, seq: _Sequence, logits: torch.Tensor) -> None:
        """Draw the next generated token and apply the stop rules (rule 4: beacons never count)."""
        request = seq.request
        logits = logits.float().cpu()
        top2 = torch.topk(logits, 2).values
        seq.margins.append(float(top2[0] - top2[1]))
        if request.return_logits:
            seq.logits.append(logits.clone())
        if request.temperature <= 0:
            token = int(torch.argmax(logits))
        else:
            probs = torch.softmax(logits / request.temperature, dim=-1)
            if request.top_p < 1.0:
                sorted_probs, order = torch.sort(probs, descending=True)
                outside = torch.cumsum(sorted_probs, 0) - sorted_probs > request.top_p
                sorted_probs[outside] = 0.0
                probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
            token = int(torch.multinomial(probs, 1, generator=seq.generator))
        seq.generated.append(token)
        stop_ids = request.stop_token_ids
        if stop_ids is None:
            stop_ids = self.default_stop_ids
        if not request.ignore_eos and token in stop_ids:
            seq.finish_reason = "stop"
        elif len(seq.generated) >= request.max_tokens:
            seq.finish_reason = "length"
        elif request.kv_budget is not None and seq.kv_len >= request.kv_budget:
            # Every forward (token or beacon) adds one entry: the next one would exceed it.
            seq.finish_reason = "budget"
        else:
            seq.pending = token

    @staticmethod
    def _result(seq: _Sequence) -> GenerationResult:
        return GenerationResult(
            token_ids=seq.generated,
            finish_reason=seq.finish_reason or "length",
            num_beacons=seq.num_beacons,
            peak_kv_entries=max(seq.kv_trace),
            mean_kv_entries=sum(seq.kv_trace) / len(seq.kv_trace),
            kv_trace=seq.kv_trace,
            top2_margins=seq.margins,
            logits=torch.stack(seq.logits) if seq.logits else None,
        )
