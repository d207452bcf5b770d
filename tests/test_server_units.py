"""Gateway parts that need no engine: the ratio policy, usage accounting, remote routing and
the bundled-model lookup of ``breadcrumbs serve``. Remote upstreams are faked with httpx's
``MockTransport`` speaking the vLLM OpenAI server's wire format."""

from __future__ import annotations

import json

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from breadcrumbs_vllm.checkpoint import (
    BreadcrumbsConfig,
    init_model,
    read_breadcrumbs_config,
    save_checkpoint,
)
from breadcrumbs_vllm.cli import serve
from breadcrumbs_vllm.vllm_plugin.compression import resolve_ratio
from server import Settings, create_app
from server.compression import KVState, RatioPolicy, choice_savings
from server.engines.remote import RemoteBackend
from server.errors import APIError
from server.metrics import engine_kv_state

CONFIG = BreadcrumbsConfig(beacon_token_id=4, ratios=[2, 4, 8, 16])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model, tokenizer, bc = init_model(2, 64)
    return save_checkpoint(model, tokenizer, bc, tmp_path_factory.mktemp("u") / "tiny")


# ---------------------------------------------------------------- ratio policy
@pytest.mark.parametrize("usage, expected", [
    (0.0, None),      # idle: no compression
    (0.70, None),     # 0.70 + 100/1000 is exactly the target
    (0.71, 2),        # 0.71 + 0.100 > 0.8, 0.71 + 0.056 fits
    (0.75, 4),
    (0.77, 8),
    (0.78, 8),        # nothing fits: the smallest peak (8 peaks below 16 here)
    (0.95, 8),
])
def test_auto_takes_least_compression_that_fits(usage, expected):
    policy = RatioPolicy(CONFIG, kv_target=0.8)
    # prompt 10, max_tokens 90: peaks 100 (none), 56 (2), 36 (4), 29 (8), 31 (16)
    assert policy.resolve("auto", KVState(usage, 1000), 10, 90, 1) == expected


def test_auto_without_pool_size_uses_usage_alone():
    policy = RatioPolicy(CONFIG, kv_target=0.8)
    assert policy.resolve("auto", KVState(0.5, None), 10, 90, 1) is None
    assert policy.resolve("auto", KVState(0.9, None), 10, 90, 1) == 8
    assert policy.resolve("auto", KVState(0.9, None), 10, 2000, 1) == 16


def test_explicit_ratios_are_checked_against_the_model():
    policy = RatioPolicy(CONFIG, kv_target=0.8)
    assert policy.resolve(8, KVState(0.99, 1000), 10, 90, 1) == 8
    assert policy.resolve(0, KVState(0.0, 1000), 10, 90, 1) is None
    for bad in (3, 1, -2, 32):
        with pytest.raises(APIError, match="supported: 2, 4, 8, 16") as info:
            policy.check(bad)
        assert info.value.status == 400


def test_savings_follow_the_spec_schedule():
    # P=10, c=4, 13 generated -> 12 fed: 2 beacons, held 10 + 2 + 4 = 16 vs 22 uncompressed.
    s = choice_savings(10, 4, 13, block_size=8)
    assert (s.beacons, s.entries_saved, s.blocks_saved) == (2, 6, 1)
    assert s.peak_entries == 16
    assert choice_savings(10, None, 13, 8).entries_saved == 0


# ---------------------------------------------------------------- remote mode
def test_kv_state_from_vllm_metrics():
    text = ('vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25\n'
            'vllm:cache_config_info{block_size="32",num_gpu_blocks="100",x="y"} 1.0\n')
    text += 'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.5\n'
    assert engine_kv_state(text_string_to_metric_families(text)) == KVState(0.5, 3200)
    assert engine_kv_state([]) == KVState(0.0, None)


class FakeVLLM:
    """One vLLM server: KV usage, health, ``/tokenize``, and a record of forwarded bodies."""

    def __init__(self) -> None:
        self.usage = 0.1
        self.healthy = True
        self.bodies: list[tuple[str, dict]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/health":
            return httpx.Response(200 if self.healthy else 503)
        if path == "/metrics":
            return httpx.Response(200, text=(
                f'vllm:kv_cache_usage_perc{{engine="0"}} {self.usage}\n'
                'vllm:cache_config_info{block_size="32",num_gpu_blocks="10"} 1.0\n'))
        body = json.loads(request.content)
        self.bodies.append((path, body))
        if path == "/tokenize":
            return httpx.Response(200, json={"count": 10, "tokens": list(range(10))})
        if body.get("stream"):
            chunks = [{"choices": [{"index": 0, "text": t, "finish_reason": f}]}
                      for t, f in (("he", None), ("ll", None), ("o", "length"))]
            chunks.append({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3,
                                                     "total_tokens": 8}})
            sse = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
            return httpx.Response(200, text=sse, headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json={
            "choices": [{"index": 0, "text": "hello", "finish_reason": "length"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 12, "total_tokens": 17}})


def test_remote_forwards_to_one_upstream_with_the_ratio_in_vllm_xargs(checkpoint):
    from vllm.entrypoints.openai.completion.protocol import (
        CompletionRequest as VLLMCompletionRequest,
    )

    fake = FakeVLLM()
    settings = Settings(model=checkpoint, served_model_name="tiny", upstream="http://a:8000",
                        health_interval_s=3600)
    policy = RatioPolicy(read_breadcrumbs_config(checkpoint), settings.kv_target)
    backend = RemoteBackend(settings, policy, transport=httpx.MockTransport(fake))
    with TestClient(create_app(settings, backend=backend)) as client:
        assert client.get("/ready").status_code == 200
        body = {"model": "tiny", "prompt": "hi", "max_tokens": 9, "compression_ratio": 8,
                "logprobs": 2, "some_vllm_field": True}
        resp = client.post("/v1/completions", json=body)
        assert resp.status_code == 200, resp.text
        assert resp.json()["usage"]["breadcrumbs"] == {
            "ratio": 8, "beacons_inserted": 1, "peak_kv_entries": 14, "kv_entries_saved": 7}
        path, sent = fake.bodies[-1]
        assert path == "/v1/completions" and sent["vllm_xargs"] == {"compression_ratio": 8}
        assert "compression_ratio" not in sent and sent["logprobs"] == 2 and sent["some_vllm_field"]
        # Whatever the gateway forwards, vLLM's request schema accepts and the plugin on the
        # upstream resolves to the same ratio.
        bc = read_breadcrumbs_config(checkpoint)
        for ratio in (8, None):
            client.post("/v1/completions", json={**body, "compression_ratio": ratio})
            request = VLLMCompletionRequest.model_validate(fake.bodies[-1][1])
            assert resolve_ratio(request.to_sampling_params(16).extra_args, bc) == ratio

        stream = client.post("/v1/completions", json={**body, "stream": True}).text
        events = [json.loads(line[6:]) for line in stream.splitlines()
                  if line.startswith("data: {")]
        assert "".join(c["text"] for e in events for c in e["choices"]) == "hello"
        assert events[-1]["usage"]["breadcrumbs"]["ratio"] == 8

        # "auto": the upstream's /tokenize sizes the prompt; its pool is 320 tokens.
        fake.usage = 0.75  # 0.75 + 19/320 fits no compression: 0.809 > 0.8
        client.portal.call(backend.poll_once)
        resp = client.post("/v1/completions", json={**body, "compression_ratio": "auto"})
        assert fake.bodies[-2][0] == "/tokenize"
        assert fake.bodies[-1][1]["vllm_xargs"] == {"compression_ratio": 2}
        assert resp.json()["usage"]["breadcrumbs"]["ratio"] == 2

        fake.healthy = False
        client.portal.call(backend.poll_once)
        assert client.get("/ready").status_code == 503


def test_layer_refuses_bad_ratios_and_caps_before_the_engine(checkpoint):
    fake = FakeVLLM()
    settings = Settings(model=checkpoint, served_model_name="tiny", upstream="http://a:8000",
                        health_interval_s=3600, max_n=2, max_tokens_cap=100, api_keys="k1,k2")
    policy = RatioPolicy(read_breadcrumbs_config(checkpoint), settings.kv_target)
    backend = RemoteBackend(settings, policy, transport=httpx.MockTransport(fake))
    auth = {"Authorization": "Bearer k2"}
    with TestClient(create_app(settings, backend=backend)) as client:
        chat = {"model": "tiny", "messages": [{"role": "user", "content": "x"}]}
        for extra, param in (({"compression_ratio": 3}, "compression_ratio"),
                             ({"vllm_xargs": {"compression_ratio": "7"}}, "compression_ratio"),
                             ({"n": 3}, "n"), ({"max_completion_tokens": 101},
                                                "max_completion_tokens")):
            resp = client.post("/v1/chat/completions", json={**chat, **extra}, headers=auth)
            assert resp.status_code == 400, resp.text
            assert resp.json()["error"]["param"] == param
        assert not fake.bodies  # nothing reached the engine
        assert client.post("/v1/chat/completions", json=chat).status_code == 401
        ok = client.post("/v1/chat/completions", json=chat, headers=auth)
        assert ok.status_code == 200
        # No max tokens asked: the gateway's default is applied, under the newer field name.
        assert fake.bodies[-1][1]["max_completion_tokens"] == 100  # the default, under the cap
        assert client.get("/metrics").status_code == 200  # ops routes need no key


# ---------------------------------------------------------------- breadcrumbs serve
def test_serve_prefers_the_bundled_model(tmp_path, monkeypatch, checkpoint):
    monkeypatch.setattr(serve, "REPO_ROOT", tmp_path)
    assert serve.bundled_model() is None
    (tmp_path / "models" / "plain").mkdir(parents=True)
    (tmp_path / "models" / "plain" / "config.json").write_text("{}")  # no breadcrumbs block
    assert serve.bundled_model() is None
    bundled = tmp_path / "models" / "student"
    bundled.mkdir()
    (bundled / "config.json").write_text((checkpoint / "config.json").read_text())
    assert serve.bundled_model() == bundled
