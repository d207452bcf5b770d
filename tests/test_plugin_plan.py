"""The scheduler's plan for the worker, checked on both sides, and the measured usage report.

One in-process engine (block size 32, eager, prefix caching, 64-token steps, a pool small
enough that the second batch preempts). Every step the test reads the plan the scheduler attached
to the ``SchedulerOutput`` and checks it against ``BeaconSchedule`` computed here from the
request alone; after the runner's ``_prepare_inputs`` it checks the runner's buffers against the
plan. Every finished compressed request's report must equal the schedule's formulas, so an
eviction that stopped working would show as a mismatch.
"""

from __future__ import annotations

import gc
import os
import pickle
from collections import Counter

import pytest

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from test_plugin_engine import RATIOS, EngineProbe, _assert_same, _prompts
from vllm import SamplingParams
from vllm.inputs import TokensPrompt
from vllm.v1.core.sched.output import SchedulerOutput

from breadcrumbs_vllm.reference import ReferenceEngine
from breadcrumbs_vllm.spec import BeaconSchedule
from breadcrumbs_vllm.vllm_plugin.compression import cdiv
from breadcrumbs_vllm.vllm_plugin.plan import RequestStep, attach, plan_of
from breadcrumbs_vllm.vllm_plugin.report import read_report

pytestmark = pytest.mark.vllm

MAX_TOKENS = 300
BLOCK = 32


def test_a_plan_survives_the_pickle_that_carries_it_to_tensor_parallel_workers():
    """``MultiprocExecutor`` pickles the ``SchedulerOutput`` into its broadcast queue."""
    out = SchedulerOutput.make_empty()
    plan = {"r": RequestStep(8, 3, 41, (5, 9), 43, 40, False, (49, 41))}
    attach(out, plan)
    assert plan_of(pickle.loads(pickle.dumps(out))) == plan
    assert plan_of(SchedulerOutput.make_empty()) is None


class PlanProbe(EngineProbe):
    """``EngineProbe`` that also checks every step's plan and the runner's buffers."""

    def __init__(self, path) -> None:
        super().__init__(path, BLOCK, True, num_gpu_blocks_override=40,
                         max_model_len=1024)
        self.problems: list[str] = []
        self.seen: Counter[str] = Counter()
        core = self.llm.llm_engine.engine_core.engine_core
        self.runner = core.model_executor.driver_worker.worker.model_runner
        prepare = self.runner._prepare_inputs

        def checked_prepare(scheduler_output, num_scheduled_tokens):
            result = prepare(scheduler_output, num_scheduled_tokens)
            self.check_plan(scheduler_output)
            self.check_buffers(scheduler_output)
            return result

        self.runner._prepare_inputs = checked_prepare

    def _starts(self, scheduler_output) -> dict[str, int]:
        cached = scheduler_output.scheduled_cached_reqs
        starts = dict(zip(cached.req_ids, cached.num_computed_tokens))
        starts.update({new.req_id: new.num_computed_tokens
                       for new in scheduler_output.scheduled_new_reqs})
        return starts

    def check_plan(self, scheduler_output) -> None:
        """The plan against ``BeaconSchedule`` and the request's own counts."""
        plan = plan_of(scheduler_output) or {}
        starts = self._starts(scheduler_output)
        cached = scheduler_output.scheduled_cached_reqs
        new_ids = dict(zip(cached.req_ids, cached.new_block_ids))
        for req_id, num_new in scheduler_output.num_scheduled_tokens.items():
            request = self.scheduler.requests[req_id]
            ratio = request.sampling_params.extra_args["compression_ratio"]
            if ratio is None:
                if req_id in plan:
                    self.problems.append(f"{req_id}: uncompressed but planned")
                continue
            step = plan.get(req_id)
            if step is None:
                self.problems.append(f"{req_id}: compressed but not planned")
                continue
            schedule = BeaconSchedule(request.num_prompt_tokens, ratio)
            start, last = starts[req_id], starts[req_id] + num_new - 1
            fed_len = schedule.logical_len(request.num_output_tokens)
            beacons = [i for i in range(start, last + 1) if schedule.is_beacon(i)]
            move = ((schedule.physical_index(last), schedule.beacon_home(last))
                    if beacons else None)
            expected = RequestStep(
                ratio, step.keep_blocks, step.write_at, step.tokens, fed_len,
                schedule.physical_index(start), start + num_new >= fed_len, move)
            if step != expected or beacons not in ([], [last]):
                self.problems.append(f"{req_id} at {start}+{num_new}: {step} != {expected}")
            if step.keep_blocks is not None:
                ids = new_ids[req_id]
                held = step.keep_blocks + (len(ids[0]) if ids is not None else 0)
                if held != cdiv(schedule.physical_index(last) + 1, BLOCK):
                    self.problems.append(f"{req_id}: keeps {held} blocks at {last}")
            self.seen["beacon moves"] += move is not None
            self.seen["beacon swaps"] += len(step.tokens) == 2 and step.write_at == fed_len - 2
            self.seen["row rewrites"] += step.write_at == request.num_prompt_tokens < fed_len

    def check_buffers(self, scheduler_output) -> None:
        """The runner's token rows, lengths, samples kept and block rows, against the plan."""
        runner, batch = self.runner, self.runner.input_batch
        manager = self.scheduler.kv_cache_manager
        for req_id, step in (plan_of(scheduler_output) or {}).items():
            i = batch.req_id_to_index[req_id]
            num_new = scheduler_output.num_scheduled_tokens[req_id]
            fed = list(self.scheduler.requests[req_id].all_token_ids[:step.fed_len])
            got = {
                "tokens": list(batch.token_ids_cpu[i, :step.fed_len]) == fed,
                "num_tokens": int(batch.num_tokens_no_spec[i]) == step.fed_len,
                "seq_len": int(runner.seq_lens[i]) == step.physical_start + num_new,
                "sample": bool(runner.discard_request_mask.np[i]) != step.keep_sample,
                "blocks": int(batch.block_table[0].num_blocks_per_row[i])
                == manager.blocks_held(req_id),
            }
            if not all(got.values()):
                self.problems.append(f"{req_id}: buffers off the plan: {got}")


@pytest.fixture(scope="module")
def probe(tiny_checkpoint):
    probe = PlanProbe(tiny_checkpoint)
    yield probe
    probe.llm.llm_engine.engine_core.shutdown()
    del probe
    gc.collect()


def test_plan_and_buffers_follow_the_schedule_and_reports_are_measured(probe, tiny_checkpoint):
    prompts = _prompts(10, seed=5)
    ratios = [RATIOS[i % len(RATIOS)] for i in range(10)]
    params = [SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True,
                             extra_args={"compression_ratio": r}) for r in ratios]
    outs = probe.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params,
                              use_tqdm=False)
    assert not probe.problems, probe.problems[:5]
    assert probe.preemptions > 0 and min(probe.seen.values()) > 0, (probe.seen,
                                                                  probe.preemptions)
    for prompt, ratio, out in zip(prompts, ratios, outs):
        report = read_report(out.kv_transfer_params)
        if ratio is None:
            assert report is None
            continue
        schedule = BeaconSchedule(len(prompt), ratio)
        fed = MAX_TOKENS - 1
        assert (report.ratio, report.beacons, report.fed_tokens, report.kv_entries,
                report.peak_kv_entries) == (
            ratio, schedule.num_beacons_fed(fed), schedule.logical_len(fed),
            schedule.kv_entries(fed), schedule.peak_kv_entries(fed))
        assert report.peak_kv_blocks == cdiv(report.peak_kv_entries, BLOCK)
    reference = ReferenceEngine.from_checkpoint(tiny_checkpoint)
    _assert_same(reference, prompts, ratios, [list(o.outputs[0].token_ids) for o in outs],
                 max_tokens=MAX_TOKENS)
