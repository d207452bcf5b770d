"""Held-out evaluation: accuracy against KV entries for each ratio and each training-free baseline.

Every setting decodes the same problems, in one of two modes:

- **per-problem peaks** (:meth:`Evaluator.run`): a baseline row matches one ratio; each problem
  runs the baseline model (a student's teacher, by default in ``breadcrumbs eval``) under the
  baseline's policy with a KV budget equal to the peak that problem reached at that ratio, so the
  comparison is at the same peak memory, sequence by sequence.
  A switch row (:class:`Switch`, ``breadcrumbs eval --switch``) decodes the model along a ratio
  path that rises once (spec rule 8), as a server raising a request's ratio under KV pressure
  would; it has no baselines.
- **fixed budget** (:meth:`Evaluator.run_fixed_budget`): every method gets the same budget ``B``
  entries, prompt included, for each ``B`` of a sweep: the test-time-scaling comparison, where
  a compressed model can afford a longer chain of reasoning within the same memory.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from tqdm.auto import tqdm

from breadcrumbs_vllm.reference import (
    GenerationRequest,
    GenerationResult,
    ReferenceEngine,
    make_policy,
)
from breadcrumbs_vllm.tasks.base import Problem, Task

#: Failed completions kept per row (``EvalRow.failed_examples``).
FAILED_EXAMPLES = 3


@dataclass
class EvalRow:
    """One line of the results table (and one object of the results JSON)."""

    setting: str  # "none", "c=8", a switch "c=4→16@256", or a baseline name
    #: The compression ratio (a switch row: the start ratio), or for a baseline the ratio whose
    #: peak it matches.
    ratio: int | None
    budget: float | None  # baselines: mean KV budget per sequence
    accuracy: float
    mean_generated_tokens: float
    mean_kv_entries: float
    peak_kv_entries: float  # mean over sequences of each sequence's peak
    max_peak_kv_entries: int
    n: int
    #: Failed completions by the task's diagnosis (``Task.diagnose``), most frequent first.
    failures: dict[str, int] = field(default_factory=dict)
    #: Fixed-budget mode: the budget ``B`` every method of this sweep point had.
    kv_budget: int | None = None
    #: How the generations ended: ``stop``, ``length`` or ``budget`` (stopped at ``B``).
    finish_reasons: dict[str, int] = field(default_factory=dict)
    #: A switch row: the ``(t, c)`` where its ratio rises (rule 8); empty for a fixed ratio.
    switches: list[list[int]] = field(default_factory=list)
    #: The first few failed completions, ``{"problem", "diagnosis", "text"}`` (``problem``: the
    #: index in the evaluated set): what went wrong, readable from the JSON without decoding again.
    failed_examples: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Switch:
    """A ratio path with one rise: ``start`` until ``at`` generated tokens, then ``higher``.

    ``at`` is a window boundary of ``start`` (a positive multiple of it), as rule 8 requires.
    """

    start: int
    higher: int
    at: int

    @property
    def setting(self) -> str:
        return f"c={self.start}→{self.higher}@{self.at}"

    def request_options(self) -> dict:
        """The :class:`GenerationRequest` fields that decode along this path."""
        return {"ratio": self.start, "switches": ((self.at, self.higher),)}


def chat_prompt_ids(engine: ReferenceEngine, problem: Problem) -> list[int]:
    """Token ids of the problem as a chat turn, the format models are trained and served in."""
    assert engine.tokenizer is not None
    return engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": problem.prompt}], add_generation_prompt=True, tokenize=True,
        return_dict=False,
    )


class Evaluator:
    """Decodes problems in batches and scores them with the task's verifier."""

    def __init__(self, engine: ReferenceEngine, task: Task, max_tokens: int, batch_size: int = 32,
                 temperature: float = 0.0, progress: bool = True,
                 baseline_engine: ReferenceEngine | None = None) -> None:
        self.engine = engine
        #: Runs the baselines: StreamingLLM / TOVA are applied to an uncompressed model.
        self.baseline_engine = baseline_engine or engine
        self.task = task
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.temperature = temperature
        self.progress = progress

    def run(self, problems: Sequence[Problem], ratios: Sequence[int | None],
            baselines: Sequence[str], switches: Sequence[Switch] = ()) -> list[EvalRow]:
        """One row per ratio, one per switch, then one per (baseline, compressed ratio) pair."""
        prompts = [chat_prompt_ids(self.engine, p) for p in problems]
        total = len(ratios) + len(switches) + len(baselines) * sum(r is not None for r in ratios)
        bar = tqdm(total=total * len(problems), desc="eval", unit="seq", disable=not self.progress)
        rows: list[EvalRow] = []
        peaks: dict[int, list[int]] = {}
        for ratio in ratios:
            results = self._decode(self.engine, prompts, bar,
                                   lambda i, ratio=ratio: {"ratio": ratio})
            rows.append(self._row("none" if ratio is None else f"c={ratio}", ratio, None,
                                  problems, results))
            if ratio is not None:
                peaks[ratio] = [r.peak_kv_entries for r in results]
        for switch in switches:
            results = self._decode(self.engine, prompts, bar,
                                   lambda i, switch=switch: switch.request_options())
            row = self._row(switch.setting, switch.start, None, problems, results)
            row.switches = [[switch.at, switch.higher]]
            rows.append(row)
        for name in baselines:
            for ratio, budget in peaks.items():
                results = self._decode(self.baseline_engine, prompts, bar,
                                       lambda i, name=name, budget=budget: {
                                           "policy": make_policy(name, budget[i])})
                rows.append(self._row(name, ratio, sum(budget) / len(budget), problems, results))
        bar.close()
        return rows

    def run_fixed_budget(self, problems: Sequence[Problem], budgets: Sequence[int],
                         ratios: Sequence[int], baselines: Sequence[str]) -> list[EvalRow]:
        """For each budget ``B``: the teacher, each ratio, then each baseline, all under ``B``.

        ``teacher`` is the baseline model uncompressed, stopped where its cache holds ``B``
        entries (the engine's ``kv_budget``): an answer not reached by then is wrong. ``c=k`` is
        the model at ratio ``k`` under the same stop; its cache grows about ``1/k`` as fast, so
        it reaches further. A baseline runs the baseline model with cache size ``B``: policy
        budget ``B - 1``, because the engine measures a cache right after each forward, newest
        entry included, so its peak is ``B`` like every other method's. ``max_tokens`` still
        caps every generation (the baselines never run out of room, so it is their only stop).
        """
        prompts = [chat_prompt_ids(self.engine, p) for p in problems]
        longest = max(len(p) for p in prompts)
        if min(budgets) <= longest:
            raise ValueError(f"every KV budget must exceed the longest prompt ({longest} entries); "
                             f"got {min(budgets)}")
        total = len(budgets) * (1 + len(ratios) + len(baselines)) * len(problems)
        bar = tqdm(total=total, desc="eval", unit="seq", disable=not self.progress)
        rows: list[EvalRow] = []
        for budget in budgets:
            stop = {"kv_budget": budget}
            runs = [("teacher", None, None, self.baseline_engine, lambda i, stop=stop: stop)]
            runs += [(f"c={ratio}", ratio, None, self.engine,
                      lambda i, ratio=ratio, stop=stop: {"ratio": ratio, **stop})
                     for ratio in ratios]
            runs += [(name, None, float(budget), self.baseline_engine,
                      lambda i, b=budget, name=name: {"policy": make_policy(name, b - 1)})
                     for name in baselines]
            for setting, ratio, cache_size, engine, options in runs:
                row = self._row(setting, ratio, cache_size, problems,
                                self._decode(engine, prompts, bar, options))
                assert row.max_peak_kv_entries <= budget, (setting, row.max_peak_kv_entries)
                row.kv_budget = budget
                rows.append(row)
        bar.close()
        return rows

    def _decode(self, engine: ReferenceEngine, prompts: list[list[int]], bar: tqdm,
                options) -> list[GenerationResult]:
        results: list[GenerationResult] = []
        for start in range(0, len(prompts), self.batch_size):
            requests = [
                GenerationRequest(prompts[i], max_tokens=self.max_tokens,
                                  temperature=self.temperature, seed=i, **options(i))
                for i in range(start, min(start + self.batch_size, len(prompts)))
            ]
            results.extend(engine.generate(requests))
            bar.update(len(requests))
        return results

    def _row(self, setting: str, ratio: int | None, budget: float | None,
             problems: Sequence[Problem], results: list[GenerationResult]) -> EvalRow:
        assert self.engine.tokenizer is not None
        texts = [self.engine.tokenizer.decode(r.token_ids, skip_special_tokens=True)
                 for r in results]
        diagnoses = [self.task.diagnose(p, t) for p, t in zip(problems, texts, strict=True)]
        verdicts = Counter(diagnoses)
        correct = verdicts.pop("correct", 0)
        failed = [{"problem": i, "diagnosis": d, "text": t}
                  for i, (d, t) in enumerate(zip(diagnoses, texts, strict=True)) if d != "correct"]
        n = len(results)
        return EvalRow(
            setting=setting,
            ratio=ratio,
            budget=budget,
            accuracy=correct / n,
            mean_generated_tokens=sum(len(r.token_ids) for r in results) / n,
            mean_kv_entries=sum(r.mean_kv_entries for r in results) / n,
            peak_kv_entries=sum(r.peak_kv_entries for r in results) / n,
            max_peak_kv_entries=max(r.peak_kv_entries for r in results),
            n=n,
            failures=dict(verdicts.most_common()),
            finish_reasons=dict(Counter(r.finish_reason for r in results).most_common()),
            failed_examples=failed[:FAILED_EXAMPLES],
        )
