"""Real OpenAI clients against the running gateway, in embedded and in remote mode.

The gateway is a thin layer over vLLM's own OpenAI serving layer, so every field vLLM accepts is
accepted here with vLLM's meaning. These tests drive it the way users do: the official ``openai``
client (chat, completions, responses; streaming; logprobs; penalties; structured output; ``n``,
``stop``, ``seed``), LangChain's ``ChatOpenAI`` and LiteLLM, each passing ``compression_ratio``
through its extra-body mechanism and reading ``usage.breadcrumbs`` back where it exposes it.

Remote mode runs the same tests against a gateway that forwards to ``python -m
vllm.entrypoints.openai.api_server`` with the plugin (started here). One engine per mode.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import openai
import pytest
from servers import free_port, gateway_in_thread, stop, wait_until_up

from breadcrumbs_vllm.spec import BeaconSchedule
from server import Settings, create_app

pytestmark = pytest.mark.vllm

KEY = "client-key"
MODEL = "tiny"
#: Gateway URL -> where its engine's ``vllm:*`` metrics are (itself, or the remote upstream).
ENGINE_METRICS: dict[str, str] = {}


@pytest.fixture(scope="module", params=["embedded", "remote"])
def gateway(request, tiny_checkpoint, tmp_path_factory):
    """The gateway's base URL, in either mode, over the shared tiny random model."""
    common = {"model": tiny_checkpoint, "served_model_name": MODEL, "api_keys": [KEY],
              "rate_limit_per_minute": 0, "max_model_len": 1024}
    upstream = None
    if request.param == "embedded":
        settings = Settings(kv_cache_gib=1, **common)
    else:
        port = free_port()
        log = tmp_path_factory.mktemp("vllm") / "vllm.log"
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model",
               str(tiny_checkpoint), "--served-model-name", MODEL, "--host", "127.0.0.1",
               "--port", str(port), "--block-size", "32", "--max-model-len", "1024",
               "--kv-cache-memory-bytes", str(1 << 30)]
        env = {k: v for k, v in os.environ.items() if k != "VLLM_CPU_KVCACHE_SPACE"}
        upstream = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                    env=env)
        wait_until_up(f"http://127.0.0.1:{port}/health", upstream, log, timeout=240)
        settings = Settings(upstream=f"http://127.0.0.1:{port}", **common)
    try:
        with gateway_in_thread(create_app(settings)) as base:
            ENGINE_METRICS[base] = settings.upstream or base
            yield base
    finally:
        if upstream is not None:
            stop(upstream)


@pytest.fixture(scope="module")
def client(gateway):
    return openai.OpenAI(base_url=f"{gateway}/v1", api_key=KEY, max_retries=0)


def remote(client: openai.OpenAI) -> bool:
    """Whether ``client`` talks to the gateway in remote mode (its engine is an upstream's)."""
    base = str(client.base_url).rstrip("/").removesuffix("/v1")
    return ENGINE_METRICS[base] != base


def breadcrumbs_for(prompt_len: int, ratio: int | None, generated: list[int],
                    measured: bool = True) -> dict:
    """``usage.breadcrumbs`` the spec's schedule gives for these choices' token counts (what
    the engine's reports must add up to, and what the gateway falls back on without them)."""
    fed = [n - 1 for n in generated]  # the token that ends a generation is never fed
    s = BeaconSchedule(prompt_len, ratio)
    return {"ratio": ratio, "ratio_path": [[0, ratio]],
            "beacons_inserted": sum(s.num_beacons_fed(f) for f in fed),
            "peak_kv_entries": sum(s.peak_kv_entries(f) for f in fed),
            "kv_entries_saved": sum(prompt_len + f - s.kv_entries(f) for f in fed),
            "measured": measured}


MESSAGES = [{"role": "user", "content": "Use 3 5 8 to make 24."}]


# ---------------------------------------------------------------- the openai client
def test_chat_with_logprobs_penalties_and_compression(client):
    reply = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_completion_tokens=24, temperature=0,
        logprobs=True, top_logprobs=2, presence_penalty=0.5, frequency_penalty=0.3,
        extra_body={"compression_ratio": 8, "ignore_eos": True})
    choice = reply.choices[0]
    assert reply.usage.completion_tokens == 24
    assert len(choice.logprobs.content) == 24  # a logprob per output token, beacons never
    assert all(len(t.top_logprobs) == 2 for t in choice.logprobs.content)
    assert reply.usage.model_extra["breadcrumbs"] == breadcrumbs_for(
        reply.usage.prompt_tokens, 8, [24])


def test_chat_stream_reports_breadcrumbs_in_the_usage_chunk(client):
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=30, stream=True,
        stream_options={"include_usage": True},
        extra_body={"compression_ratio": 4, "ignore_eos": True}))
    usage = chunks[-1].usage
    assert not chunks[-1].choices and usage.completion_tokens == 30
    # A remote stream carries no engine report (vLLM's stream chunks have no
    # kv_transfer_params): the figures then follow the schedule, and say so.
    assert usage.model_extra["breadcrumbs"] == breadcrumbs_for(usage.prompt_tokens, 4, [30],
                                                               measured=not remote(client))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_completions_n_stop_and_seed(client):
    kwargs = {"model": MODEL, "prompt": "12+3=", "max_tokens": 20, "n": 2, "seed": 7,
              "temperature": 1.0, "extra_body": {"compression_ratio": None}}
    first, again = client.completions.create(**kwargs), client.completions.create(**kwargs)
    assert [c.text for c in first.choices] == [c.text for c in again.choices]  # seeded
    full = client.completions.create(model=MODEL, prompt="abc", max_tokens=40, temperature=0,
                                     extra_body={"ignore_eos": True, "compression_ratio": 8})
    stop_at = full.choices[0].text[3:5]
    cut = client.completions.create(model=MODEL, prompt="abc", max_tokens=40, temperature=0,
                                    stop=[stop_at],
                                    extra_body={"ignore_eos": True, "compression_ratio": 8})
    assert cut.choices[0].finish_reason == "stop"
    assert full.choices[0].text.startswith(cut.choices[0].text)


N_CHOICES = {"model": MODEL, "prompt": "hello", "max_tokens": 16, "n": 2, "temperature": 1.0,
             "extra_body": {"compression_ratio": 2, "ignore_eos": True}}


def test_completions_n_counts_every_choice(client):
    """Answered whole, ``n > 1`` reaches the gateway with one choice's engine report at most
    (vLLM's parallel sampling keeps the last child's ``kv_transfer_params``; a completions
    answer has none): the figures follow the schedule for every choice, and say so."""
    reply = client.completions.create(**N_CHOICES)
    assert len(reply.choices) == 2 and reply.usage.completion_tokens == 32
    assert reply.usage.model_extra["breadcrumbs"] == breadcrumbs_for(
        reply.usage.prompt_tokens, 2, [16, 16], measured=False)


def test_completions_n_streamed_counts_every_choice(client):
    """Streamed, each choice's report comes with its last chunk, unless vLLM's output collector
    merged the two last chunks (both choices end on the same step here) and kept one; the
    figures are the same either way."""
    if remote(client):
        pytest.skip("a remote stream gives the gateway only the usage total (docs/gateway.md)")
    chunks = list(client.completions.create(**N_CHOICES, stream=True,
                                            stream_options={"include_usage": True}))
    crumbs = chunks[-1].usage.model_extra["breadcrumbs"]
    assert crumbs == breadcrumbs_for(chunks[-1].usage.prompt_tokens, 2, [16, 16],
                                     measured=crumbs["measured"])


def test_structured_output_follows_the_json_schema(client):
    schema = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}},
              "required": ["answer"], "additionalProperties": False}
    reply = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=60, temperature=0,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "verdict", "schema": schema}},
        extra_body={"compression_ratio": 4})
    assert json.loads(reply.choices[0].message.content)["answer"] in ("yes", "no")


def test_responses_api(client):
    reply = client.responses.create(model=MODEL, input="Use 3 5 8 to make 24.",
                                    max_output_tokens=20,
                                    extra_body={"compression_ratio": 8, "ignore_eos": True})
    assert reply.output_text
    crumbs = reply.usage.model_extra["breadcrumbs"]
    assert crumbs["ratio"] == 8 and crumbs["beacons_inserted"] == breadcrumbs_for(
        reply.usage.input_tokens, 8, [reply.usage.output_tokens])["beacons_inserted"]


def test_fields_real_clients_send_are_accepted(gateway):
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 8, "logit_bias": {"10": -5},
            "metadata": {"user": "a"}, "store": False, "service_tier": "auto",
            "reasoning_effort": "low", "parallel_tool_calls": False, "tool_choice": "none",
            "tools": [{"type": "function", "function": {
                "name": "add", "parameters": {"type": "object", "properties": {}}}}],
            "user": "someone", "compression_ratio": "auto"}
    resp = httpx.post(f"{gateway}/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {KEY}"})
    assert resp.status_code == 200, resp.text
    # An idle server is far under the KV target: "auto" takes no compression.
    assert resp.json()["usage"]["breadcrumbs"]["ratio"] is None


def test_refused_ratio_and_routes_are_openai_errors(gateway, client):
    with pytest.raises(openai.BadRequestError, match="supported: 2, 4, 8, 16") as info:
        client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                       extra_body={"compression_ratio": 5})
    assert info.value.body["param"] == "compression_ratio"
    tokens = httpx.post(f"{gateway}/tokenize", json={"model": MODEL, "prompt": "abc"},
                        headers={"Authorization": f"Bearer {KEY}"})
    assert tokens.status_code == 200 and tokens.json()["count"] == 3
    assert httpx.post(f"{gateway}/tokenize", json={"prompt": "abc"}).status_code == 401


# ---------------------------------------------------------------- client libraries
def test_langchain_chat_openai_invoke_and_stream(gateway):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=MODEL, base_url=f"{gateway}/v1", api_key=KEY, max_tokens=20,
                     temperature=0, max_retries=0,
                     extra_body={"compression_ratio": 8, "ignore_eos": True})
    message = llm.invoke("Use 3 5 8 to make 24.")
    assert isinstance(message.content, str) and message.content
    crumbs = message.response_metadata["token_usage"]["breadcrumbs"]
    assert crumbs["ratio"] == 8 and crumbs["beacons_inserted"] > 0
    streamed = "".join(chunk.content for chunk in llm.stream("Use 3 5 8 to make 24."))
    assert streamed == message.content  # greedy: the same tokens either way


def test_litellm_completion(gateway):
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network here
    import litellm

    reply = litellm.completion(model=f"openai/{MODEL}", api_base=f"{gateway}/v1", api_key=KEY,
                               messages=MESSAGES, max_tokens=20, temperature=0,
                               extra_body={"compression_ratio": 8, "ignore_eos": True})
    assert reply.choices[0].message.content
    assert reply.usage.completion_tokens == 20
    crumbs = getattr(reply.usage, "breadcrumbs", None) or reply.usage.model_extra["breadcrumbs"]
    assert crumbs["ratio"] == 8 and crumbs["beacons_inserted"] > 0


def test_a_client_that_leaves_mid_stream_stops_its_generation(gateway):
    """Closing a stream after a few events aborts the engine's request at once, in both modes
    (remote: the gateway closes its upstream connection, which makes vLLM abort), long before
    its 900 tokens would have been generated."""
    def running() -> float:
        page = httpx.get(f"{ENGINE_METRICS[gateway]}/metrics").text
        return sum(float(line.rsplit(" ", 1)[1]) for line in page.splitlines()
                   if line.startswith("vllm:num_requests_running"))

    body = {"model": MODEL, "prompt": "p", "max_tokens": 900, "ignore_eos": True,
            "stream": True, "compression_ratio": 4}
    with httpx.stream("POST", f"{gateway}/v1/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {KEY}"}) as resp:
        events = (line for line in resp.iter_lines() if line.startswith("data: "))
        for _ in range(3):
            next(events)
        assert running() == 1
    left = time.monotonic()
    while running():
        assert time.monotonic() - left < 1.5, "the engine kept generating for a gone client"
        time.sleep(0.1)
