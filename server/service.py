"""The core both generation routes share: validate, tokenise, run, account, render.

Chat and completions differ only in how the prompt becomes token ids and how a choice is
written out (``RouteFormat``); everything else -- caps, ratio resolution, the engine call,
streaming with disconnect handling, usage and metrics -- happens once, here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from server import metrics
from server.compression import RatioPolicy, choice_savings, usage_breadcrumbs
from server.engines.base import EngineBackend, GenParams
from server.errors import APIError, ErrorResponse
from server.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    Completion,
    CompletionChoice,
    CompletionRequest,
    SamplingFields,
    Usage,
)
from server.settings import Settings

log = logging.getLogger("server")


class RouteFormat(ABC):
    """What differs between ``/v1/chat/completions`` and ``/v1/completions``."""

    route: str
    id_prefix: str

    @abstractmethod
    def prompt_ids(self, tokenizer, body: SamplingFields) -> list[int]: ...

    @abstractmethod
    def response(self, rid: str, created: int, model: str, texts: list[str],
                 finishes: list[str | None], usage: Usage) -> BaseModel: ...

    @abstractmethod
    def chunk(self, rid: str, created: int, model: str, index: int, text: str,
              finish: str | None, first: bool) -> BaseModel: ...

    @abstractmethod
    def usage_chunk(self, rid: str, created: int, model: str, usage: Usage) -> BaseModel: ...


class ChatFormat(RouteFormat):
    route = "chat"
    id_prefix = "chatcmpl"

    def prompt_ids(self, tokenizer, body: ChatCompletionRequest) -> list[int]:
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                  tokenize=True, return_dict=False))

    def response(self, rid, created, model, texts, finishes, usage) -> ChatCompletion:
        choices = [ChatChoice(index=i, message=AssistantMessage(content=t), finish_reason=f)
                   for i, (t, f) in enumerate(zip(texts, finishes))]
        return ChatCompletion(id=rid, created=created, model=model, choices=choices, usage=usage)

    def chunk(self, rid, created, model, index, text, finish, first) -> ChatCompletionChunk:
        delta = ChatDelta(role="assistant" if first else None, content=text)
        return ChatCompletionChunk(id=rid, created=created, model=model, choices=[
            ChatChunkChoice(index=index, delta=delta, finish_reason=finish)])

    def usage_chunk(self, rid, created, model, usage) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=rid, created=created, model=model, choices=[], usage=usage)


class CompletionFormat(RouteFormat):
    route = "completions"
    id_prefix = "cmpl"

    def prompt_ids(self, tokenizer, body: CompletionRequest) -> list[int]:
        if isinstance(body.prompt, list):
            if max(body.prompt) >= len(tokenizer):
                raise APIError(400, f"prompt has token ids outside the vocabulary "
                                    f"(0..{len(tokenizer) - 1})", param="prompt")
            return list(body.prompt)
        return list(tokenizer(body.prompt).input_ids)

    def response(self, rid, created, model, texts, finishes, usage) -> Completion:
        choices = [CompletionChoice(index=i, text=t, finish_reason=f)
                   for i, (t, f) in enumerate(zip(texts, finishes))]
        return Completion(id=rid, created=created, model=model, choices=choices, usage=usage)

    def chunk(self, rid, created, model, index, text, finish, first) -> Completion:
        return Completion(id=rid, created=created, model=model, choices=[
            CompletionChoice(index=index, text=text, finish_reason=finish)])

    def usage_chunk(self, rid, created, model, usage) -> Completion:
        return Completion(id=rid, created=created, model=model, choices=[], usage=usage)


@dataclass
class Job:
    """One validated request, ready for the engine."""

    fmt: RouteFormat
    body: SamplingFields
    prompt_ids: list[int]
    params: GenParams
    rid: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: int = field(default_factory=lambda: int(time.time()))
    started: float = field(default_factory=time.monotonic)

    @property
    def response_id(self) -> str:
        return f"{self.fmt.id_prefix}-{self.rid}"


class GenerationService:
    """Owns the engine backend, the tokenizer and the ratio policy for the app's lifetime."""

    def __init__(self, settings: Settings, backend: EngineBackend, tokenizer,
                 policy: RatioPolicy) -> None:
        self.settings = settings
        self.backend = backend
        self.tokenizer = tokenizer
        self.policy = policy
        self.started = int(time.time())

    # ------------------------------------------------------------------ validation
    def prepare(self, fmt: RouteFormat, body: SamplingFields, request: Request) -> Job:
        s = self.settings
        if body.model != s.model_name:
            raise APIError(404, f"model {body.model!r} does not exist; this server serves "
                                f"{s.model_name!r}", param="model", code="model_not_found")
        if body.n > s.max_n:
            raise APIError(400, f"n must be at most {s.max_n}", param="n")
        max_tokens = body.requested_max_tokens() or min(s.default_max_tokens, s.max_tokens_cap)
        if max_tokens > s.max_tokens_cap:
            raise APIError(400, f"max_tokens must be at most {s.max_tokens_cap}",
                           param="max_tokens")
        self.policy.check(body.compression_ratio)
        prompt_ids = fmt.prompt_ids(self.tokenizer, body)
        param = "messages" if isinstance(body, ChatCompletionRequest) else "prompt"
        if not prompt_ids:
            raise APIError(400, "the prompt is empty", param=param)
        if self.policy.config.beacon_token_id in prompt_ids:  # beacons are the engine's alone
            raise APIError(400, "the prompt contains the reserved <beacon> token", param=param)
        if len(prompt_ids) > s.max_prompt_tokens:
            raise APIError(400, f"prompt has {len(prompt_ids)} tokens; the limit is "
                                f"{s.max_prompt_tokens}", param="prompt",
                           code="context_length_exceeded")
        if len(prompt_ids) + max_tokens > s.max_model_len:
            raise APIError(400, f"prompt ({len(prompt_ids)} tokens) plus max_tokens "
                                f"({max_tokens}) exceeds the context length {s.max_model_len}",
                           param="max_tokens", code="context_length_exceeded")
        ratio = self.policy.resolve(body.compression_ratio, self.backend.kv_state(),
                                    len(prompt_ids), max_tokens, body.n)
        request.state.ratio = metrics.ratio_label(ratio)
        if body.seed is not None and ratio is not None and not self.backend.seeded_compression:
            raise APIError(400, "seed cannot be combined with compression on this engine (its "
                                "CPU sampler cannot rewind a seeded generator past a beacon "
                                "step); drop seed or send compression_ratio null",
                           param="seed", code="unsupported_combination")
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        params = GenParams(max_tokens=max_tokens, n=body.n, stop=stop,
                           temperature=body.temperature, top_p=body.top_p, seed=body.seed,
                           ignore_eos=body.ignore_eos, ratio=ratio)
        if s.log_content:
            log.info("request %s prompt=%r", fmt.route, self.tokenizer.decode(prompt_ids))
        return Job(fmt=fmt, body=body, prompt_ids=prompt_ids, params=params)

    # ------------------------------------------------------------------ running
    async def respond(self, fmt: RouteFormat, body: SamplingFields, request: Request):
        job = self.prepare(fmt, body, request)
        if body.stream:
            return StreamingResponse(self._sse(job), media_type="text/event-stream")
        return await self._complete(job, request)

    async def _complete(self, job: Job, request: Request) -> JSONResponse:
        """Collect the whole answer while watching for the client leaving (then abort)."""
        collect = asyncio.ensure_future(self._collect(job))
        while not collect.done():
            await asyncio.wait({collect}, timeout=0.5)
            if not collect.done() and await request.is_disconnected():
                collect.cancel()
                metrics.ABORTED.labels(job.fmt.route).inc()
                raise APIError(400, "client disconnected", code="client_disconnected")
        texts, finishes, usage = collect.result()
        result = job.fmt.response(job.response_id, job.created,
                                  self.settings.model_name, texts, finishes, usage)
        return JSONResponse(result.model_dump())

    async def _collect(self, job: Job) -> tuple[list[str], list[str | None], Usage]:
        texts = [""] * job.params.n
        finishes: list[str | None] = [None] * job.params.n
        counts = [0] * job.params.n
        async for index, text, _first in self._run(job, counts, finishes):
            texts[index] += text
        return texts, finishes, self._usage(job, counts)

    async def _run(self, job: Job, counts: list[int],
                   finishes: list[str | None]) -> AsyncIterator[tuple[int, str, bool]]:
        """Drive the engine; record latency metrics; yield ``(index, text, first_for_choice)``."""
        route = job.fmt.route
        last = None
        seen = [False] * job.params.n
        stream = self.backend.generate(job.prompt_ids, job.params, job.rid)
        try:
            async for delta in stream:
                now = time.monotonic()
                if last is None:
                    metrics.TTFT.labels(route).observe(now - job.started)
                else:
                    metrics.INTER_TOKEN.labels(route).observe(now - last)
                last = now
                counts[delta.index] += delta.num_tokens
                if delta.finish_reason is not None:
                    finishes[delta.index] = delta.finish_reason
                first = not seen[delta.index]
                seen[delta.index] = True
                yield delta.index, delta.text, first
        finally:
            await stream.aclose()

    def _usage(self, job: Job, counts: list[int]) -> Usage:
        """Usage and per-ratio metrics of a finished request."""
        route, ratio = job.fmt.route, job.params.ratio
        savings = [choice_savings(len(job.prompt_ids), ratio, n, self.settings.block_size)
                   for n in counts]
        label = metrics.ratio_label(ratio)
        metrics.PROMPT_TOKENS.labels(route).inc(len(job.prompt_ids))
        metrics.GENERATED_TOKENS.labels(route).inc(sum(counts))
        metrics.KV_ENTRIES_SAVED.labels(label).inc(sum(s.entries_saved for s in savings))
        metrics.KV_BLOCKS_SAVED.labels(label).inc(sum(s.blocks_saved for s in savings))
        metrics.BEACONS.labels(label).inc(sum(s.beacons for s in savings))
        metrics.E2E.labels(route).observe(time.monotonic() - job.started)
        return Usage(prompt_tokens=len(job.prompt_ids), completion_tokens=sum(counts),
                     total_tokens=len(job.prompt_ids) + sum(counts),
                     breadcrumbs=usage_breadcrumbs(ratio, savings))

    async def _sse(self, job: Job) -> AsyncIterator[str]:
        """Server-sent events; Starlette cancels this generator when the client disconnects,
        and closing ``_run`` closes the engine stream, which aborts the request."""
        fmt, model, rid = job.fmt, self.settings.model_name, job.response_id
        counts = [0] * job.params.n
        finishes: list[str | None] = [None] * job.params.n
        completed = False
        try:
            async for index, text, first in self._run(job, counts, finishes):
                chunk = fmt.chunk(rid, job.created, model, index, text, finishes[index], first)
                yield _event(chunk)
            usage = self._usage(job, counts)
            options = job.body.stream_options
            if options is not None and options.include_usage:
                yield _event(fmt.usage_chunk(rid, job.created, model, usage))
            completed = True
        except APIError as exc:
            completed = True
            yield _event(ErrorResponse(error=exc.body))
        finally:
            if not completed:
                metrics.ABORTED.labels(fmt.route).inc()
        yield "data: [DONE]\n\n"


def _event(payload: BaseModel) -> str:
    return f"data: {json.dumps(payload.model_dump(), separators=(',', ':'))}\n\n"
