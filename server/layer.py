"""The gateway's own part of a generation request, around vLLM's OpenAI serving layer.

For ``POST /v1/chat/completions``, ``/v1/completions`` and ``/v1/responses`` it

1. reads the JSON body and takes out ``compression_ratio`` (top level, as OpenAI clients send it
   through ``extra_body``; or ``vllm_xargs.compression_ratio``, as vLLM clients do), checks it
   against the model (400 naming the supported ratios), applies the deployment caps (``n``,
   ``max_tokens``, a default ``max_tokens``), and forwards the body with the ratio in
   ``vllm_xargs`` -- the field vLLM maps into ``SamplingParams.extra_args``, where the plugin
   reads it. Every other field reaches vLLM untouched, with vLLM's meaning;
2. opens the request's :class:`~server.compression.RequestAccount` (a context variable the
   embedded engine client fills) and, on the way back, adds ``usage.breadcrumbs`` to the answer
   -- to the JSON body, or to every streamed event that carries ``usage`` -- and counts the
   request's KV savings in the gateway's metrics.

Anything that is not valid JSON passes through unchanged, so vLLM answers it with its own error.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from breadcrumbs_vllm.vllm_plugin.compression import AUTO, MAX_KEY, RATIO_KEY, ratio_xargs
from breadcrumbs_vllm.vllm_plugin.report import read_report
from server import metrics
from server.compression import CURRENT_ACCOUNT, Generation, RatioPolicy, RequestAccount
from server.engines.base import EngineBackend
from server.errors import APIError, error_response
from server.rewrite import AnswerEditor, read_body
from server.settings import Settings

#: Route path -> (metrics label, the body field that caps output tokens).
ROUTES = {
    "/v1/chat/completions": ("chat", ("max_completion_tokens", "max_tokens")),
    "/v1/completions": ("completions", ("max_tokens",)),
    "/v1/responses": ("responses", ("max_output_tokens",)),
}
#: The message roles of OpenAI's chat API.
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_UNSET = object()
_OK = (200,)


class CompressionLayer:
    """Pure ASGI, so streamed answers pass event by event and a client that goes away is seen
    by vLLM's serving layer (which then aborts the request and frees its KV blocks)."""

    def __init__(self, app: ASGIApp, settings: Settings, policy: RatioPolicy,
                 backend: EngineBackend) -> None:
        self.app = app
        self.settings = settings
        self.policy = policy
        self.backend = backend

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else None
        if path == "/v1/models" and scope["method"] == "GET":
            await self.app(scope, receive, AnswerEditor(send, self._add_ratios, _OK))
            return
        route = ROUTES.get(path or "")
        if route is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        raw = await read_body(receive)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            await self.app(scope, _replay(raw, receive), send)
            return
        label, cap_fields = route
        try:
            account = RequestAccount(label, *self._take_ratio(body))
            self._apply_caps(body, cap_fields)
            _refuse_what_cannot_compress(body, account)
            if label == "chat":
                _refuse_unknown_roles(body)
            if label == "responses":
                _refuse_output_messages_vllm_cannot_read(body)
        except APIError as exc:
            await error_response(exc)(scope, receive, send)
            return
        if not self.backend.fills_account and (body.get("n") or 1) > 1 and label != "responses":
            body["return_token_ids"] = True  # each choice's count, for usage.breadcrumbs
        xargs = body.get("vllm_xargs") if isinstance(body.get("vllm_xargs"), dict) else {}
        xargs = {k: v for k, v in xargs.items() if k != MAX_KEY}
        body["vllm_xargs"] = {**xargs, **ratio_xargs(account.requested, account.ceiling)}
        scope.setdefault("state", {})["ratio"] = metrics.ratio_label(account.ratio)
        scope["state"]["route"] = label  # the remote forwarder's latency metrics use it
        token = CURRENT_ACCOUNT.set(account)
        raw = json.dumps(body).encode()
        try:
            await self.app(_with_length(scope, raw), _replay(raw, receive),
                           AnswerEditor(send, lambda answer, _: self._add_usage(account, answer),
                                        _OK))
        finally:
            CURRENT_ACCOUNT.reset(token)
            scope["state"]["ratio"] = metrics.ratio_label(account.ratio)
            if account.requested == AUTO and account.ratio != AUTO:  # the engine said which
                metrics.AUTO_CHOSEN.labels(metrics.ratio_label(account.ratio)).inc()
            self._count(account)

    def _take_ratio(self, body: dict[str, Any]):
        """``(start, ceiling)`` of the requested ratio: top-level field first, then
        ``vllm_xargs`` (where a range is ``compression_ratio`` and ``compression_ratio_max``),
        else the model's default; removed from the body (vLLM would warn about an unknown
        top-level field)."""
        requested, maximum = body.pop(RATIO_KEY, _UNSET), None
        xargs = body.get("vllm_xargs")
        if requested is _UNSET and isinstance(xargs, dict):
            requested, maximum = xargs.get(RATIO_KEY, _UNSET), xargs.get(MAX_KEY)
        if requested is _UNSET:
            requested = self.policy.config.default_ratio
        return self.policy.check(requested, maximum)

    def _apply_caps(self, body: dict[str, Any], cap_fields: tuple[str, ...]) -> None:
        s = self.settings
        n = body.get("n", 1)
        if isinstance(n, int) and n > s.max_n:
            raise APIError(400, f"n must be at most {s.max_n}", param="n")
        asked = [(f, body[f]) for f in cap_fields if body.get(f) is not None]
        for name, value in asked:
            if isinstance(value, int) and value > s.max_tokens_cap:
                raise APIError(400, f"{name} must be at most {s.max_tokens_cap}", param=name)
        if not asked:
            body[cap_fields[0]] = min(s.default_max_tokens, s.max_tokens_cap)

    def _add_ratios(self, answer: Any, _status: int) -> Any:
        """``/v1/models``: each card also lists the ratios ``compression_ratio`` may take."""
        for card in answer.get("data") or [] if isinstance(answer, dict) else []:
            card["compression_ratios"] = self.policy.ratios
        return answer

    def _add_usage(self, account: RequestAccount, answer: Any) -> Any:
        """Add ``breadcrumbs`` to the answer's usage (``None``: it has none)."""
        if not isinstance(answer, dict):
            return None
        holder = answer.get("response") if isinstance(answer.get("response"), dict) else answer
        usage = holder.get("usage")
        if not isinstance(usage, dict):
            return None
        self.read_answer(account, holder)
        usage["breadcrumbs"] = account.usage_breadcrumbs(self.settings.block_size)
        return answer

    def read_answer(self, account: RequestAccount, answer: dict[str, Any]) -> None:
        """Fill the account from an answer's ``usage`` where no engine client fills it (remote
        mode): ``completion_tokens`` is the one choice's count, so ``n > 1`` needs the choices'
        ``token_ids`` (which the remote backend asks its upstream for)."""
        if self.backend.fills_account:
            return
        usage = answer["usage"]  # /v1/responses counts input and output tokens
        prompt = usage.get("prompt_tokens", usage.get("input_tokens")) or 0
        generation = Generation(prompt, account.requested)
        choices = answer.get("choices") or []
        if len(choices) > 1:
            for choice in choices:
                generation.add(choice.get("index", 0), len(choice.get("token_ids") or []))
        else:
            generation.add(0, usage.get("completion_tokens", usage.get("output_tokens")) or 0)
        report = read_report(answer.get("kv_transfer_params"))  # chat answers carry the report
        if report is not None:
            generation.reported(report)
        account.generations = [generation]

    def _count(self, account: RequestAccount) -> None:
        """The request's tokens and KV savings into the gateway's metrics, once it is over."""
        bs = self.settings.block_size
        label = metrics.ratio_label(account.ratio)
        for generation in account.generations:
            for saving in generation.savings(bs):
                metrics.KV_ENTRIES_SAVED.labels(label).inc(saving.entries_saved)
                metrics.KV_BLOCKS_SAVED.labels(label).inc(saving.blocks_saved)
                metrics.BEACONS.labels(label).inc(saving.beacons)
            metrics.PROMPT_TOKENS.labels(account.route).inc(generation.prompt_len)
            metrics.GENERATED_TOKENS.labels(account.route).inc(sum(generation.tokens.values()))


def _refuse_what_cannot_compress(body: dict[str, Any], account: RequestAccount) -> None:
    """400 for request fields that cannot work together with compression (one that may start
    uncompressed and rise included).

    Beam search builds its own ``SamplingParams`` for every beam step (``vllm_xargs`` do not
    reach them), so a compressed beam search would silently run uncompressed.
    """
    compressed = account.requested is not None or account.ceiling is not None
    if compressed and body.get("use_beam_search"):
        raise APIError(400, "use_beam_search cannot be combined with compression (vLLM's beam "
                            "search drops the request's compression_ratio); send "
                            "compression_ratio null", param="use_beam_search")


def _refuse_unknown_roles(body: dict[str, Any]) -> None:
    """400 naming ``messages[i].role`` for a role OpenAI's chat API does not have, as OpenAI does.

    vLLM accepts any role string (a custom message type) and hands it to the chat template,
    which renders it or drops it silently: a request that is wrong answered as if it were right.
    """
    messages = body.get("messages")
    for i, message in enumerate(messages if isinstance(messages, list) else []):
        role = message.get("role") if isinstance(message, dict) else None
        if isinstance(role, str) and role not in CHAT_ROLES:
            raise APIError(400, f"Invalid value: {role!r}. Supported values are: "
                                + ", ".join(repr(r) for r in CHAT_ROLES),
                           param=f"messages[{i}].role")


def _refuse_output_messages_vllm_cannot_read(body: dict[str, Any]) -> None:
    """400 for an earlier assistant message in ``/v1/responses`` input whose content does not
    start with ``output_text`` (a ``refusal`` part, or no part at all).

    vLLM 0.32 reads such a message as ``item.content[0].text``
    (``responses/utils.py: _construct_message_from_response_item``), which raises
    ``AttributeError`` / ``IndexError``: a 500 for what is bad input (schemathesis found it).
    """
    items = body.get("input")
    for i, item in enumerate(items if isinstance(items, list) else []):
        if not (isinstance(item, dict) and item.get("type") == "message"
                and item.get("role") == "assistant" and isinstance(item.get("content"), list)):
            continue
        parts = item["content"]
        if not parts or not isinstance(parts[0], dict) or parts[0].get("type") != "output_text":
            raise APIError(400, "an assistant message in input must start with an output_text "
                                "part (vLLM cannot read refusal parts or empty content there)",
                           param=f"input[{i}].content")


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the (rewritten) body over once, then waits for a disconnect."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _with_length(scope: Scope, body: bytes) -> Scope:
    headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
    return {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
