"""Scheduler side: beacon insertion, block accounting by physical length, the worker's plan.

``BreadcrumbsScheduler`` is selected through ``SchedulerConfig.scheduler_cls`` for beacon models
only, and builds its KV-cache manager as a :class:`PhysicalBlockAccountant`; both keep their
class for the engine's life. Their overrides return to vLLM's code after a test or a dict lookup
for an uncompressed request. For a compressed one they keep ``Request.num_computed_tokens`` and the
token list *logical* (beacons included,
so positions and preemption replay come for free) and sizes KV blocks by the *physical* length
``[prompt | beacons | current window]``, returning tail blocks to the ``BlockPool`` as soon as a
window is evicted.
"""

from __future__ import annotations

from collections.abc import Callable

from vllm.v1.core.kv_cache_manager import KVCacheBlocks, KVCacheManager
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import Request, RequestStatus

from breadcrumbs_vllm.vllm_plugin.compression import AUTO, RequestCompression, cdiv
from breadcrumbs_vllm.vllm_plugin.kv_budget import (
    RISE_ABOVE,
    BudgetSettings,
    KVProjection,
    Riser,
    admits,
    choose_ratio,
    escalate,
)
from breadcrumbs_vllm.vllm_plugin.metrics import CompressionStats
from breadcrumbs_vllm.vllm_plugin.model import BeaconModel
from breadcrumbs_vllm.vllm_plugin.plan import RequestStep, StepPlan, attach
from breadcrumbs_vllm.vllm_plugin.report import KVLedger
from breadcrumbs_vllm.vllm_plugin.stats_channel import StatsWriter


class PhysicalBlockAccountant(KVCacheManager):
    """``KVCacheManager`` that holds compressed requests to ``ceil(physical_len / block_size)``.

    vLLM's ``Scheduler`` builds its ``KVCacheManager`` itself (no factory), so the scheduler
    replaces it with :meth:`adopt`, once, at the end of its own ``__init__``. Uncompressed requests
    and prompt chunks (where physical == logical) take the stock path; every later chunk of a
    compressed request allocates or frees exactly the blocks its physical end needs, never caches
    (decode blocks are overwritten in place, so their logical hashes would lie) and frees tail
    blocks to the pool at once.
    """

    compressed: dict[str, RequestCompression]
    stats: CompressionStats
    #: The scheduler's admission rule for requests not yet running (``kv_budget.admits``)
    #: while requests sent with "auto" or a range are unfinished; ``None`` otherwise (stock).
    admission: Callable[[Request], bool] | None

    @classmethod
    def adopt(cls, manager: KVCacheManager, compressed: dict[str, RequestCompression],
              stats: CompressionStats) -> PhysicalBlockAccountant:
        """An accountant over ``manager``'s state (its block pool, coordinator and counters,
        shared, not copied), given the scheduler's compressed requests and counts.

        ``manager`` must not be used afterwards: the scheduler (and a KV connector, if any)
        holds the accountant in its place. Raises ``ValueError`` for layouts with several KV
        groups (encoder-decoder, hybrid, sliding-window models), whose blocks it cannot count.
        """
        if manager.num_kv_cache_groups != 1:
            raise ValueError(
                f"breadcrumbs: beacon models need one full-attention KV-cache group, this "
                f"engine has {manager.num_kv_cache_groups} (hybrid, sliding-window or "
                f"encoder-decoder layout)")
        accountant = cls.__new__(cls)
        vars(accountant).update(vars(manager))
        accountant.compressed = compressed
        accountant.stats = stats
        accountant.admission = None
        return accountant

    @property
    def _req_to_blocks(self) -> dict:
        return self.coordinator.single_type_managers[0].req_to_blocks

    @property
    def kv_block_size(self) -> int:
        return self.coordinator.single_type_managers[0].block_size

    def allocate_slots(self, request: Request, num_new_tokens: int,
                       num_new_computed_tokens: int = 0,
                       new_computed_blocks: KVCacheBlocks | None = None,
                       num_lookahead_tokens: int = 0, num_external_computed_tokens: int = 0,
                       delay_cache_blocks: bool = False, num_encoder_tokens: int = 0,
                       full_sequence_must_fit: bool = False, reserved_blocks: int = 0,
                       has_scheduled_reqs: bool = True,
                       skip_zeroing_group_ids: tuple[int, ...] = ()) -> KVCacheBlocks | None:
        # vLLM calls this for every scheduled request at every step, so the stock path costs a
        # test and a plain call: parameters spelled out (``check_surface`` pins them), where
        # ``*args, **kwargs`` and ``super()`` cost about four times the call itself.
        if (self.admission is not None and has_scheduled_reqs
                and request.status != RequestStatus.RUNNING and not self.admission(request)):
            return None  # vLLM stops admitting for this step, as when no block is free
        comp = self.compressed.get(request.request_id) if self.compressed else None
        if comp is None or request.num_computed_tokens < comp.prompt_len:
            return KVCacheManager.allocate_slots(
                self, request, num_new_tokens, num_new_computed_tokens, new_computed_blocks,
                num_lookahead_tokens, num_external_computed_tokens, delay_cache_blocks,
                num_encoder_tokens, full_sequence_must_fit, reserved_blocks, has_scheduled_reqs,
                skip_zeroing_group_ids)
        assert not num_lookahead_tokens, "speculative decoding is not supported"
        start = request.num_computed_tokens
        needed = comp.blocks_needed(start, num_new_tokens, self.kv_block_size)
        blocks = self._req_to_blocks[request.request_id]
        if len(blocks) > needed:
            tail = blocks[needed:]
            del blocks[needed:]
            self.block_pool.free_blocks(reversed(tail))
            self.stats.blocks_freed(comp.ratio, len(tail))
            return self.empty_kv_cache_blocks
        missing = needed - len(blocks)
        if missing > self.block_pool.get_num_free_blocks():
            return None
        new_blocks = self.block_pool.get_new_blocks(missing)
        blocks.extend(new_blocks)
        return self.create_kv_cache_blocks((new_blocks,))

    def blocks_held(self, request_id: str) -> int:
        return len(self._req_to_blocks.get(request_id, ()))

    def lacks_blocks(self, request: Request, comp: RequestCompression, num_new_tokens: int
                     ) -> bool:
        """Whether the chunk of ``num_new_tokens`` from ``request``'s computed end needs more
        new blocks than the pool has free (:meth:`allocate_slots` would return ``None``).

        Cheap first: the request's held blocks cover its computed tokens' physical slots, and
        a chunk adds at most one physical slot per token, so it needs at most
        ``cdiv(num_new_tokens, block_size)`` new blocks. While that many are free (every decode
        step of a pool with a free block) the rule-5 figure is not computed here; it is computed
        once, in :meth:`allocate_slots`."""
        free = self.block_pool.get_num_free_blocks()
        if cdiv(num_new_tokens, self.kv_block_size) <= free:
            return False
        needed = comp.blocks_needed(request.num_computed_tokens, num_new_tokens,
                                    self.kv_block_size)
        return needed - self.blocks_held(request.request_id) > free


#: On the stock path the projected KV usage ships every this many steps (and when idle).
PROJECTION_EVERY = 8


class BreadcrumbsScheduler(Scheduler):
    """vLLM's scheduler for a beacon model: the Breadcrumbs rules for compressed requests.

    1. After a window's last token is sampled, the beacon goes into the request's token list
       *before* the sampled token ``y`` (rule 2); it is not an output token, so ``max_tokens``,
       usage and streaming never see it (rule 4).
    2. Chunks end at the prompt's end and at every beacon (:meth:`RequestCompression.chunk_limit`),
       so the beacon step's sample is discarded like a partial prefill's and the worker can evict
       between the beacon and ``y``. Preemption replay is then window by window automatically.
    3. Prefix-cache hits of compressed requests stop inside the prompt.

    :meth:`add_request` resolves each request's ratio, once (``"auto"`` included);
    :meth:`_update_after_schedule` writes the step's plan for the worker (``plan.py``), from
    which the worker derives nothing of its own; :meth:`make_stats` publishes the plugin's
    figures (on its own channel, ``stats_channel.py``) and :meth:`_free_request` the request's
    measured report (``report.py``).

    Invariant: ``compressed``'s keys are a subset of ``reported``'s, and both hold only
    unfinished requests; an uncompressed request passes each override after a test, and
    a step with neither dict holding anything ships the projection alone, every
    :data:`PROJECTION_EVERY` steps. The overrides vLLM calls for every running request at every
    step test ``compressed`` first and call the base class by name (no ``super()`` object).
    """

    def __init__(self, vllm_config, *args, **kwargs) -> None:
        super().__init__(vllm_config, *args, **kwargs)
        beacon_model = BeaconModel.from_model_config(vllm_config.model_config)
        if beacon_model is None:
            raise ValueError("breadcrumbs: BreadcrumbsScheduler serves beacon models only")
        self.beacon_model = beacon_model
        settings = BudgetSettings.from_additional_config(vllm_config.additional_config)
        self.kv_target = settings.target
        #: Whether requests that may rise do (``kv_budget.ESCALATION_KEY``).
        self.escalation = settings.escalation
        #: Whether requests that may rise are also admitted by ``kv_budget.admits``.
        self.admission_rule = settings.admission_rule
        #: How far past the pool the admission rule may commit (``kv_budget.OVERCOMMIT_KEY``).
        self.overcommit = settings.overcommit
        self.compressed: dict[str, RequestCompression] = {}
        #: What each compressed or ``"auto"`` request reports when it finishes.
        self.reported: dict[str, KVLedger] = {}
        #: Compressed requests in the worker's batch: those the last plan scheduled (vLLM's
        #: runner drops a request from its batch on a step that does not schedule it).
        self._in_batch: set[str] = set()
        #: Compressed requests whose last update put a beacon before the sample ``y``: the
        #: worker wrote ``y`` where the beacon goes.
        self._beacon_rows: set[str] = set()
        #: Unfinished requests that may still rise, with the highest ratio each may reach.
        self.risers: dict[str, int] = {}
        #: Requests that rose during the current step (one rise each per step).
        self._risen: set[str] = set()
        self.compression_stats = CompressionStats(
            StatsWriter(vllm_config, beacon_model.bc.ratios) if self.log_stats else None)
        self._unshipped_steps = 0  # steps with nothing compressed since the projection shipped
        #: Whether the last holdings shipped may be non-empty (so the next step ships them too).
        self._holdings_shown = False
        #: Unfinished requests sent with "auto" or a range while the admission rule is on:
        #: admitted by ``kv_budget.admits``, and the only ones that wait for a block.
        self.managed: set[str] = set()
        #: Whether a running managed request that lacks a block waits this step instead of vLLM
        #: preempting another: unless the last step scheduled nothing.
        self._may_wait = True
        self.kv_cache_manager = PhysicalBlockAccountant.adopt(
            self.kv_cache_manager, self.compressed, self.compression_stats)
        if self.connector is not None:
            self.connector.bind_kv_cache_manager(self.kv_cache_manager)

    def add_request(self, request: Request) -> None:
        """Resolve the request's ratio: the one place the engine does (``"auto"`` from this
        engine's projected KV usage); the plan carries it to the worker."""
        req_id, params = request.request_id, request.sampling_params
        ratio = self.beacon_model.requested(params)
        ceiling = self.beacon_model.ceiling(params)
        if ratio == AUTO:
            ratio = choose_ratio(self.beacon_model.bc.ratios, request.num_prompt_tokens,
                                 request.max_tokens, self.kv_projection(), self.kv_target,
                                 self.beacon_model.decodes_uncompressed)
        comp = self.beacon_model.at_ratio(request.num_prompt_tokens, ratio, request.max_tokens)
        if comp is not None:
            self.compressed[req_id] = comp
        if self.admission_rule and ceiling is not None:
            self.managed.add(req_id)
            self.kv_cache_manager.admission = self._admits
        if self.escalation and ceiling is not None and (ratio is None or ratio < ceiling):
            self.risers[req_id] = ceiling
        if comp is not None or ceiling is not None:
            self.reported[req_id] = KVLedger(ratio, path=[[0, ratio]])
        super().add_request(request)

    def schedule(self, *args, **kwargs):
        """vLLM's step, after raising ratios if the running requests' projected KV usage
        passed the pool (``kv_budget.py``, "Escalation"); a running managed request that
        lacks a block waits (:meth:`_reserve_prefill_lookahead`)."""
        if self.risers:
            self._risen.clear()
            self._escalate()
        return Scheduler.schedule(self, *args, **kwargs)

    def _preempt_request(self, request, *args, **kwargs):
        """vLLM's preemption, counted by whether a request could still have risen."""
        self.compression_stats.preempted(could_rise=bool(self.risers))
        return Scheduler._preempt_request(self, request, *args, **kwargs)

    def _admits(self, request: Request) -> bool:
        """Admission for a request not yet running (``kv_budget.admits``): one sent with
        "auto" or a range waits until the running requests' projected growth, once raised as
        far as each may go, leaves room for its own peak at its highest ratio (in the pool and
        the share past it that ``overcommit`` allows); any other is admitted as stock vLLM
        admits it."""
        if request.request_id not in self.managed:
            return True
        block_size = self.kv_cache_manager.kv_block_size
        peak = self._peak(request, self._at_ceiling(request.request_id))
        squeezed = {r.request_id: self._at_ceiling(r.request_id) for r in self.running}
        return admits(self._running_projection(squeezed), cdiv(peak, block_size) * block_size,
                      self.overcommit)

    def _at_ceiling(self, req_id: str) -> RequestCompression | None:
        """``req_id``'s compression once escalation has raised it as far as it may go now (as
        it is, if it may not rise or a rise would not lower its peak)."""
        comp, ceiling = self.compressed.get(req_id), self.risers.get(req_id)
        if ceiling is None:
            return comp
        raised = self._raised(self.requests[req_id], comp, ceiling)
        return raised if comp is None or raised.peak_entries < comp.peak_entries else comp

    def raise_ratio(self, req_id: str) -> bool:
        """Raise ``req_id`` one step now, whatever the KV usage; ``False`` if it may not rise
        (further). What escalation does to each request it picks."""
        riser = self._riser(req_id) if req_id in self.risers else None
        if riser is not None:
            self._raise(riser)
        return riser is not None

    def _escalate(self) -> None:
        """Raise the ratios ``kv_budget.escalate`` picks (one step each), judged by the running
        requests: the waiting ones are the admission rule's to hold back."""
        projection = self._running_projection(self.compressed)
        if projection.usage <= RISE_ABOVE:
            return
        risers = [r for r in map(self._riser, [i for i in self.risers if i not in self._risen])
                  if r is not None]
        for riser in escalate(risers, projection, RISE_ABOVE):
            self._raise(riser)

    def _riser(self, req_id: str) -> Riser | None:
        """What raising ``req_id`` one step would save; ``None`` past its maximum."""
        request = self.requests[req_id]
        comp = self.compressed.get(req_id)
        ratios = sorted(self.beacon_model.bc.ratios)
        to = next((c for c in ratios if comp is None or c > comp.ratio), None)
        if to is None or to > self.risers[req_id]:
            del self.risers[req_id]
            return None
        raised = self._raised(request, comp, to)
        return Riser(req_id, self._growth(request, comp), self._growth(request, raised), to)

    def _raised(self, request: Request, comp: RequestCompression | None,
                to: int) -> RequestCompression:
        """``request`` with windows of ``to`` from its next window boundary on."""
        if comp is None:  # its generated tokens so far are kept like its prompt
            return self.beacon_model.at_ratio(request.num_prompt_tokens, to, request.max_tokens,
                                              offset=request.num_output_tokens)
        return comp.rise(request.num_output_tokens, to)

    @staticmethod
    def _peak(request: Request, comp: RequestCompression | None) -> int:
        """The most KV entries ``request`` can hold before ``max_tokens`` ends it."""
        if comp is None:
            return request.num_prompt_tokens + request.max_tokens
        return comp.peak_entries

    def _growth(self, request: Request, comp: RequestCompression | None) -> int:
        """The pool ``request`` may still take before ``max_tokens`` ends it, in whole blocks
        (as tokens): its peak rounded up to blocks (the accountant's bound), less what it
        holds."""
        block_size = self.kv_cache_manager.kv_block_size
        held = self.kv_cache_manager.blocks_held(request.request_id)
        return max(cdiv(self._peak(request, comp), block_size) - held, 0) * block_size

    def _running_projection(self, compressed: dict[str, RequestCompression | None]
                            ) -> KVProjection:
        """The running requests' projection in whole blocks, each compressed as
        ``compressed`` says: what admission and rises judge by (``kv_budget.py``)."""
        growth = sum(self._growth(r, compressed.get(r.request_id)) for r in self.running)
        pool_blocks = self.kv_cache_manager.block_pool.num_gpu_blocks - 1  # less the null block
        return KVProjection(self.kv_cache_manager.usage, growth,
                            pool_blocks * self.kv_cache_manager.kv_block_size)

    def _raise(self, riser: Riser) -> None:
        req_id = riser.request_id
        request, comp = self.requests[req_id], self.compressed.get(req_id)
        raised = self._raised(request, comp, riser.to_ratio)
        self.compressed[req_id] = raised
        switch = raised.offset + raised.schedule.path[-1][0]
        path = self.reported[req_id].path
        if path[-1][0] == switch:  # no token generated at the ratio it replaces
            path[-1][1] = riser.to_ratio
        else:
            path.append([switch, riser.to_ratio])
        self.compression_stats.escalated(None if comp is None else comp.ratio, riser.to_ratio)
        self._risen.add(req_id)
        if riser.to_ratio >= self.risers[req_id]:
            del self.risers[req_id]

    def _update_after_schedule(self, scheduler_output) -> None:
        """vLLM's update, after the step's plan went onto ``scheduler_output``: blocks are
        allocated by now, and each request's ``num_computed_tokens`` still says where its chunk
        starts (vLLM advances it here)."""
        if self.compressed:
            attach(scheduler_output, self._plan(scheduler_output))
        # A step in which every running request waited leaves the next to vLLM's preemption,
        # so requests that wait for each other's blocks cannot stall the engine.
        self._may_wait = scheduler_output.total_num_scheduled_tokens > 0
        Scheduler._update_after_schedule(self, scheduler_output)

    def _plan(self, scheduler_output) -> StepPlan:
        """One :class:`RequestStep` per compressed request scheduled this step (``plan.py``).

        Every token write is idempotent (it writes what the fed sequence holds), so where the
        worker's row might lack beacons the whole generated part is sent.
        """
        scheduled = scheduler_output.num_scheduled_tokens
        cached = scheduler_output.scheduled_cached_reqs
        new_block_ids = dict(zip(cached.req_ids, cached.new_block_ids))
        plan: StepPlan = {}
        for req_id, comp in self.compressed.items():
            num_new = scheduled.get(req_id)
            if not num_new:
                continue
            request = self.requests[req_id]
            start, fed_len, schedule = (request.num_computed_tokens, request.num_tokens,
                                        comp.schedule)
            held = self.kv_cache_manager.blocks_held(req_id)
            keep = None  # vLLM sends new and resumed requests their whole block list
            if req_id in new_block_ids and req_id not in cached.resumed_req_ids:
                new_ids = new_block_ids[req_id]
                keep = held - (len(new_ids[0]) if new_ids is not None else 0)
            if req_id not in self._in_batch:  # (re-)added to the batch from outputs alone
                write_at = comp.prompt_len
                tokens = tuple(request.all_token_ids[comp.prompt_len:fed_len])
            elif req_id in self._beacon_rows:
                write_at, tokens = fed_len - 2, (comp.beacon_id, request.all_token_ids[-1])
            else:
                write_at, tokens = fed_len, ()
            last = start + num_new - 1
            move = ((schedule.physical_index(last), schedule.beacon_home(last))
                    if schedule.is_beacon(last) else None)
            physical_start = schedule.physical_index(start)
            plan[req_id] = RequestStep(comp.ratio, keep, write_at, tokens, fed_len,
                                       physical_start, start + num_new >= fed_len, move)
            self.reported[req_id].observe(start + num_new, physical_start + num_new, held,
                                          move is not None)
        self._in_batch = set(plan)
        self._beacon_rows.clear()
        return plan

    def kv_projection(self) -> KVProjection:
        """This engine's pool now and its unfinished requests' remaining growth (kv_budget.py).

        Cost: a few integer operations per unfinished request, each time the stats ship (see
        :meth:`make_stats`) and once per ``"auto"`` request.
        """
        compressed, remaining = self.compressed, 0
        for request in self.requests.values():  # inlined: this runs on every step
            comp = compressed.get(request.request_id)
            if comp is None:
                left = (request.num_prompt_tokens + request.max_tokens
                        - request.num_computed_tokens)
            else:
                left = comp.peak_entries - comp.physical_start(request.num_computed_tokens)
            if left > 0:
                remaining += left
        pool_blocks = self.kv_cache_manager.block_pool.num_gpu_blocks - 1  # less the null block
        return KVProjection(self.kv_cache_manager.usage, remaining, pool_blocks * self.block_size)

    def _holdings(self) -> dict[int, tuple[int, int]]:
        """Per ratio: (blocks held, blocks the same requests would hold uncompressed)."""
        out: dict[int, tuple[int, int]] = {}
        for req_id, comp in self.compressed.items():
            request = self.requests.get(req_id)
            held = self.kv_cache_manager.blocks_held(req_id)
            if request is None or held == 0:
                continue
            block_size = self.kv_cache_manager.kv_block_size
            uncompressed = -(-(request.num_prompt_tokens + request.num_output_tokens)
                             // block_size)
            h, u = out.get(comp.ratio, (0, 0))
            out[comp.ratio] = (h + held, u + uncompressed)
        return out

    def make_stats(self, *args, **kwargs):
        """vLLM's step stats, as stock makes them; the plugin's figures go to its own channel
        (``metrics.py``), read by the front end's stat logger when these stats reach it.

        The projected usage is published compressed or not (a router balances on it): every
        step while a compressed or ``"auto"`` request is unfinished, with the counts and holdings
        (the step that frees the last one publishes empty holdings, which drop the held/saved
        gauges to 0); otherwise every :data:`PROJECTION_EVERY` steps and on the step the engine
        empties (so it is exact at rest). With compression off, computing it every step cost
        1.5-2.3% of stock's instructions per step, every 8th step about 0.5%
        (``loadtests/bench_instructions.py``).
        """
        stats = super().make_stats(*args, **kwargs)
        if stats is None:  # the engine runs without stats (``log_stats``)
            return None
        if self.reported or self._holdings_shown:
            holdings = self._holdings() if self.compressed else {}
            self.compression_stats.publish(holdings, self.kv_projection().usage)
            self._holdings_shown = bool(self.reported)
            self._unshipped_steps = 0
            return stats
        self._unshipped_steps += 1
        if self._unshipped_steps >= PROJECTION_EVERY or not self.requests:
            self.compression_stats.publish(None, self.kv_projection().usage)
            self._unshipped_steps = 0
        return stats

    def shutdown(self) -> None:
        """vLLM's shutdown, then the stats channel's name goes if no front end claimed it."""
        Scheduler.shutdown(self)
        self.compression_stats.close()

    def _reserve_prefill_lookahead(self, request, num_computed_tokens, num_new_tokens):
        """vLLM's chunk size, capped at the prompt's end and the next beacon (rule 2); 0 (vLLM
        skips the request this step) for a running managed request that needs a block the pool
        lacks when it may wait (``kv_budget.py``, "Waits"), where vLLM would preempt another."""
        num_new_tokens = Scheduler._reserve_prefill_lookahead(
            self, request, num_computed_tokens, num_new_tokens)
        comp = self.compressed.get(request.request_id) if self.compressed else None
        if comp is None:
            return num_new_tokens
        num_new_tokens = min(num_new_tokens, comp.chunk_limit(num_computed_tokens))
        if (self._may_wait and num_new_tokens and request.request_id in self.managed
                and request.status == RequestStatus.RUNNING
                and self.kv_cache_manager.lacks_blocks(request, comp, num_new_tokens)):
            self.compression_stats.waited()
            return 0
        return num_new_tokens

    def _get_local_prefix_cache_hit(self, request: Request):
        """vLLM's hit, cut inside the prompt for a compressed request (rule 3)."""
        blocks, num_hit, boundary, flag = super()._get_local_prefix_cache_hit(request)
        comp = self.compressed.get(request.request_id)
        if comp is None:
            return blocks, num_hit, boundary, flag
        block_size = self.kv_cache_manager.kv_block_size
        max_blocks = (comp.prompt_len - 1) // block_size
        if num_hit > max_blocks * block_size:
            blocks = KVCacheBlocks(tuple(group[:max_blocks] for group in blocks.blocks))
            num_hit = max_blocks * block_size
        return blocks, num_hit, boundary, flag

    def _update_request_with_output(self, request, new_token_ids, is_stale=False):
        """vLLM's update, after the beacon went into the token list where it belongs (rule 1)."""
        comp = self.compressed.get(request.request_id) if self.compressed else None
        if comp is not None and new_token_ids:
            assert len(new_token_ids) == 1, "speculative decoding is not supported"
            if comp.schedule.is_beacon(request.num_tokens):
                request._all_token_ids.append(comp.beacon_id)
                self._beacon_rows.add(request.request_id)
                self.compression_stats.beacon_inserted(
                    comp.window_ratio(request.num_output_tokens))
        return Scheduler._update_request_with_output(self, request, new_token_ids, is_stale)

    def _free_request(self, request: Request, *args, **kwargs):
        """vLLM's free, plus the request's measured report in its ``kv_transfer_params`` (which
        vLLM's chat completions answer carries), then forget it."""
        kv_params, ec_params = super()._free_request(request, *args, **kwargs)
        req_id = request.request_id
        self.risers.pop(req_id, None)
        self.managed.discard(req_id)
        if not self.managed:  # stock admission again: one test per allocation
            self.kv_cache_manager.admission = None
        comp = self.compressed.pop(req_id, None)
        if comp is not None:
            self._in_batch.discard(req_id)
            self._beacon_rows.discard(req_id)
        if req_id in self.reported:
            kv_params = self.reported.pop(req_id).into(kv_params)
        return kv_params, ec_params
